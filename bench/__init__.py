"""Benchmarks of a send, stage by stage, against this machine's limits (`python -m bench`)."""

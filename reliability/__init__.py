"""Pushflow's fault suite: real sends, real PostgreSQL and Redis, faults at known points.

Each scenario seeds its own audience, injects one kind of fault while a send
runs through the real state machine (the local runtime), then counts: every
targeted device must have exactly one delivery row with a final outcome, no
endpoint may hold the message twice, and the notification's counts must match
its rows. `python -m reliability` runs the full suite and writes
`reliability/results.json`; `tests/e2e/test_reliability.py` runs it small.
"""

"""Adapters: each owns its client and turns driver errors into domain errors."""

"""Pushflow's local runtime: the same template, ASL and handlers, without AWS or Docker."""

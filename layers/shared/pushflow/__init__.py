"""Pushflow's shared layer: the push domain, its adapters, and the Lambda plumbing."""

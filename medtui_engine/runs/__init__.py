"""Runs: the run directory, its events, the reducer, detached jobs. No heavy imports here."""

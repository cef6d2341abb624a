"""Projections: pure folds of the event stream (functional core; no I/O in here)."""

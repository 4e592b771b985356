# cython: language_level=3
"""Heartbeat hot path (placeholder until the prober lands)."""

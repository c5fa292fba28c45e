"""Benchmarks: each writes JSON rows (one object per measurement, units in the key names)."""

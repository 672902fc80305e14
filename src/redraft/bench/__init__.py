"""Benchmarks: each prints a table and saves it as JSON (and a chart)."""

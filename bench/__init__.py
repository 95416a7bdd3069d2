"""Benchmarks that print and save figures (DESIGN.md §1); never asserted as timed tests."""

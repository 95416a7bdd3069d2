"""Benchmarks that print and save figures (docs/architecture.md); never asserted as timed tests."""

"""Benchmarks printing JSON."""

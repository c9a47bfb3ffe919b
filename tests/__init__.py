"""Percept test suite."""

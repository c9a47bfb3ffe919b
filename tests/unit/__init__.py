"""Unit tests: pure, fast, no services."""

"""Store contract tests: one suite, every adapter."""

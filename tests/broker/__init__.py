"""Contract tests of the broker port, against every adapter."""

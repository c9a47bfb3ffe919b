"""The percept command, settings, and the composition of processes."""

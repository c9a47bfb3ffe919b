"""Route modules, one per resource of a surface."""

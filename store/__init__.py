"""The store port and its adapters: SQLite (embedded, one machine) and MongoDB (distributed)."""

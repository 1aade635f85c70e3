"""The state store: the port and its records (``base``), the SQLite and PostgreSQL adapters."""

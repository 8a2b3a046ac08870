"""Storage: the SQLite backend (every SQL statement, the migrations)."""

"""Alembic migrations of the job table, shared by the SQLite and PostgreSQL stores."""

"""Alembic migrations of the FluxRun index."""

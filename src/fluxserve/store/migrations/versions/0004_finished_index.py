"""Observability: an index on (finished_at, seq), so /metrics reads only newly ended jobs.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_finished", "jobs", ["finished_at", "seq"])


def downgrade() -> None:
    op.drop_index("ix_jobs_finished", "jobs")

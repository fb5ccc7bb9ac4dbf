"""Batch keys: queued jobs that can run as one batch are found by an index.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_key", sa.String(400)))
    op.create_index("ix_jobs_batch", "jobs", ["status", "batch_key", "seq"])
    # Jobs still queued from before get their key, so they batch like new ones.
    from fluxserve.domain import GenerationRequest

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT seq, request FROM jobs WHERE status = 'queued'")).all()
    for seq, request in rows:
        key = GenerationRequest.from_dict(json.loads(request)).batch_key
        bind.execute(
            sa.text("UPDATE jobs SET batch_key = :key WHERE seq = :seq"), {"key": key, "seq": seq}
        )


def downgrade() -> None:
    op.drop_index("ix_jobs_batch", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("batch_key")

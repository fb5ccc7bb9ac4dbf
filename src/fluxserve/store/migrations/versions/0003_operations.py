"""Operating it: API keys, job owners and idempotency keys, webhook delivery, workers.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("max_active", sa.Integer, nullable=False),
        sa.Column("rate_per_minute", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("current_job", sa.String(64)),
        sa.Column("gpu_memory_bytes", sa.BigInteger),
        sa.Column("gpu_memory_peak_bytes", sa.BigInteger),
    )
    with op.batch_alter_table("jobs") as batch:
        # The API key that made the job ("" with --auth off): only it may see the job.
        batch.add_column(sa.Column("owner", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("idempotency_key", sa.String(200)))
        batch.add_column(sa.Column("batch_size", sa.Integer))
        # JSON {"url", "secret", "dialect"}; delivery state pending / delivered / failed.
        batch.add_column(sa.Column("webhook", sa.Text))
        batch.add_column(sa.Column("webhook_state", sa.String(16)))
        batch.add_column(sa.Column("webhook_attempts", sa.Integer, nullable=False,
                                   server_default="0"))  # fmt: skip
        batch.add_column(sa.Column("webhook_next_at", sa.Float))
        batch.add_column(sa.Column("webhook_error", sa.Text))
    op.create_index("ix_jobs_owner", "jobs", ["owner", "status"])
    op.create_index("ux_jobs_idempotency", "jobs", ["owner", "idempotency_key"], unique=True)
    op.create_index("ix_jobs_webhook", "jobs", ["webhook_state", "webhook_next_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_webhook", "jobs")
    op.drop_index("ux_jobs_idempotency", "jobs")
    op.drop_index("ix_jobs_owner", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in ("webhook_error", "webhook_next_at", "webhook_attempts", "webhook_state",
                       "webhook", "batch_size", "idempotency_key", "owner"):  # fmt: skip
            batch.drop_column(column)
    op.drop_table("workers")
    op.drop_table("api_keys")

"""The jobs table: queue and system of record.

Databases made by fluxserve before it used migrations already have the table; for them
this revision adds only the columns they lack.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

COLUMNS_ADDED_LATER = {
    "cancel_requested": lambda: sa.Column(
        "cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()
    ),
    "report": lambda: sa.Column("report", sa.Text),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("jobs"):
        op.create_table(
            "jobs",
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("id", sa.String(64), nullable=False, unique=True),
            sa.Column("model", sa.String(200), nullable=False),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("request", sa.Text, nullable=False),
            sa.Column("progress", sa.Float, nullable=False, server_default="0"),
            sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
            sa.Column("worker_id", sa.String(200)),
            sa.Column("lease_expires_at", sa.Float),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("started_at", sa.Float),
            sa.Column("finished_at", sa.Float),
            sa.Column("result_keys", sa.Text),
            sa.Column("error_code", sa.String(64)),
            sa.Column("error_message", sa.Text),
            *(make() for make in COLUMNS_ADDED_LATER.values()),
        )
        op.create_index("ix_jobs_claim", "jobs", ["status", "model", "seq"])
        return
    present = {column["name"] for column in inspector.get_columns("jobs")}
    with op.batch_alter_table("jobs") as batch:
        for name, make in COLUMNS_ADDED_LATER.items():
            if name not in present:
                batch.add_column(make())
    if "ix_jobs_claim" not in {index["name"] for index in inspector.get_indexes("jobs")}:
        op.create_index("ix_jobs_claim", "jobs", ["status", "model", "seq"])


def downgrade() -> None:
    op.drop_table("jobs")

"""The LoRA registry: a name (BFL's finetune id) for a LoRA source and its default scale.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loras",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("source", sa.String(2100), nullable=False),
        sa.Column("scale", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("loras")

"""the parts of OpenTelemetry LLM calls waiting for each other (span, log records)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 12:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The table of events/otel_join.py (consumers/otel_join.py's waiting room); a copy, as migrations are.
    op.create_table(
        "otel_join_parts",
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("span_id", sa.String(length=16), nullable=False),
        sa.Column("part", sa.String(length=40), nullable=False),
        sa.Column("seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("deadline", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("trace_id", "span_id", "part", name=op.f("pk_otel_join_parts")),
    )
    op.create_index(op.f("ix_otel_join_parts_seen_ms"), "otel_join_parts", ["seen_ms"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_otel_join_parts_seen_ms"), table_name="otel_join_parts")
    op.drop_table("otel_join_parts")

"""Call records: the rest of a call's row, its timeline (turns, tool calls, digits), and the
durable outbox of finished-call webhooks.

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
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("answered_by", sa.String(16), nullable=True))
        batch.add_column(sa.Column("instructions", sa.Text, nullable=True))
        batch.add_column(sa.Column("metadata", sa.Text, nullable=True))
        batch.add_column(sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("end_reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("instance", sa.String(64), nullable=True))
    op.create_index("ix_calls_created_at", "calls", ["created_at", "call_sid"])
    op.create_index("ix_calls_ended_at", "calls", ["ended_at"])
    op.create_index("ix_calls_from_number", "calls", ["from_number"])
    op.create_index("ix_calls_to_number", "calls", ["to_number"])
    op.create_table(
        "call_events",
        sa.Column("call_sid", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("offset_ms", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("call_sid", "seq"),
    )
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("call_sid", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease", sa.String(32), nullable=True),
        sa.Column("leased_by", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("call_sid", "event_type", name="uq_webhook_outbox_call_event"),
    )
    op.create_index("ix_webhook_outbox_due", "webhook_outbox", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("webhook_outbox")
    op.drop_table("call_events")
    op.drop_index("ix_calls_to_number", "calls")
    op.drop_index("ix_calls_from_number", "calls")
    op.drop_index("ix_calls_ended_at", "calls")
    op.drop_index("ix_calls_created_at", "calls")
    with op.batch_alter_table("calls") as batch:
        for column in ("instance", "end_reason", "ended_at", "metadata", "instructions", "answered_by", "status"):
            batch.drop_column(column)

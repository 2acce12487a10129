"""Calls as the signed webhook announced them, and the single-use tokens of their media streams.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.String(64), primary_key=True),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("from_number", sa.String(32), nullable=False),
        sa.Column("to_number", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stream_started_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "stream_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("call_sid", sa.String(64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_stream_tokens_expires_at", "stream_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("stream_tokens")
    op.drop_table("calls")

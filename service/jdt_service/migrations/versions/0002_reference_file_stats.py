"""reference case files: their size and modification time at registration

A job on a reference set checks them (and the folder's listing) before it scores, so a set
whose files changed on disk is refused rather than scored under its old version. Rows of
sets registered before this revision have none and are checked by their listing only.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 07:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reference_cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("size", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("mtime_ns", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reference_cases", schema=None) as batch_op:
        batch_op.drop_column("mtime_ns")
        batch_op.drop_column("size")

"""stored options: drop only_requested where no labels are given

``only_requested`` without ``labels`` was accepted and did nothing; it is now refused, and
the options of jobs and reference sets are parsed again when their reports are read or new
jobs are submitted, so rows stored before would answer 422. Dropping it from those rows
keeps their meaning (it had none without labels). A reference set whose defaults held it
without labels loses it too: a job on it that gives labels asks for it itself.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: the strings a form field reads as true (pydantic's booleans)
_TRUE = {"1", "on", "t", "true", "y", "yes"}


def upgrade() -> None:
    connection = op.get_bind()
    for name in ("jobs", "reference_sets"):
        table = sa.table(name, sa.column("id", sa.String), sa.column("options", sa.JSON))
        for row_id, options in connection.execute(sa.select(table.c.id, table.c.options)):
            if not isinstance(options, dict) or "only_requested" not in options:
                continue
            wanted = str(options["only_requested"]).strip().lower() in _TRUE
            if wanted and str(options.get("labels") or "").strip():
                continue
            kept = {key: value for key, value in options.items() if key != "only_requested"}
            connection.execute(sa.update(table).where(table.c.id == row_id).values(options=kept))


def downgrade() -> None:
    """Nothing to restore: the dropped field had no effect."""

"""Version 2: mlm accuracy, run keys, division and hardware, config, per-sentence NLL, isolation.

Revision ID: 0002
Revises: 0001

Before Alembic this was a list of SQLite statements (BLOB columns, which PostgreSQL lacks); the
same columns are now added with portable types.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from harness.migrations import set_schema_version

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for name, type_ in (
        ("valid_accuracy", sa.Float()), ("test_accuracy", sa.Float()), ("run_key", sa.String(64)),
        ("division", sa.String(40)), ("hardware", sa.String(300)), ("config", sa.JSON()),
        ("git_commit", sa.String(40)), ("test_sentence_nll", sa.LargeBinary()),
        ("valid_sentence_nll", sa.LargeBinary()), ("isolation", sa.JSON()),
    ):
        op.add_column("runs", sa.Column(name, type_))
    # IF NOT EXISTS: some version 1 databases already had the track index.
    op.create_index("ix_runs_track", "runs", ["track"], if_not_exists=True)
    op.create_index("ix_runs_run_key", "runs", ["run_key"], if_not_exists=True)
    set_schema_version(2)

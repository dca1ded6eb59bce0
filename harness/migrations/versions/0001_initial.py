"""Version 1: runs, their validation curves and the schema version.

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


def upgrade() -> None:
    op.create_table(
        "harness_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.bulk_insert(sa.table("harness_meta", sa.column("key"), sa.column("value")),
                   [{"key": "schema_version", "value": "1"}])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("entry", sa.String(200), nullable=False),
        sa.Column("entry_kind", sa.String(20), nullable=False),
        sa.Column("entry_path", sa.Text(), nullable=False),
        sa.Column("source_hash", sa.String(64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("display_name", sa.String(200)),
        sa.Column("authors", sa.Text()),
        sa.Column("description", sa.Text()),
        sa.Column("track", sa.String(40), nullable=False),
        sa.Column("hparams", sa.JSON(), nullable=False),
        sa.Column("hparam_overrides", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(20), nullable=False),
        sa.Column("device_name", sa.String(200)),
        sa.Column("threads", sa.Integer()),
        sa.Column("budget_seconds", sa.Float(), nullable=False),
        sa.Column("memory_limit_bytes", sa.Integer(), nullable=False),
        sa.Column("eval_protocol", sa.JSON(), nullable=False),
        sa.Column("data_checksums", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("failure", sa.String(40)),
        sa.Column("reason", sa.Text()),
        sa.Column("traceback", sa.Text()),
        sa.Column("log_tail", sa.Text()),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("valid_ppl", sa.Float()),
        sa.Column("valid_tokens", sa.Integer()),
        sa.Column("valid_nll_sum", sa.Float()),
        sa.Column("test_ppl", sa.Float()),
        sa.Column("test_tokens", sa.Integer()),
        sa.Column("test_nll_sum", sa.Float()),
        sa.Column("steps", sa.Integer()),
        sa.Column("epochs", sa.Float()),
        sa.Column("tokens_trained", sa.Integer()),
        sa.Column("train_seconds", sa.Float()),
        sa.Column("stop_reason", sa.String(40)),
        sa.Column("peak_memory_bytes", sa.Integer()),
        sa.Column("peak_gpu_memory_bytes", sa.Integer()),
        sa.Column("param_count", sa.Integer()),
        sa.Column("harness_version", sa.String(40), nullable=False),
        sa.Column("torch_version", sa.String(40)),
        sa.Column("python_version", sa.String(40)),
        sa.Column("platform", sa.Text()),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("runner_host", sa.String(200)),
        sa.Column("runner_pid", sa.Integer()),
    )
    for column in ("entry", "source_hash", "track", "status"):
        op.create_index(f"ix_runs_{column}", "runs", [column])
    op.create_table(
        "curve_points",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("train_seconds", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("valid_ppl", sa.Float(), nullable=False),
    )
    op.create_index("ix_curve_points_run_id", "curve_points", ["run_id"])

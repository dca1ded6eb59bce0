"""Version 3: 64-bit counts, leases instead of host and pid, one running row per run key, and the
columns of runs placed on other machines (node, CPU time, threads, audits).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from harness.migrations import set_schema_version

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Counts that pass 2**31: the 40 GiB CUDA memory default is 42,949,672,960 bytes.
BIG_COUNTS = {
    "runs": ("seed", "memory_limit_bytes", "valid_tokens", "test_tokens", "steps", "tokens_trained",
             "peak_memory_bytes", "peak_gpu_memory_bytes", "param_count"),
    "curve_points": ("steps", "tokens"),
}
NOT_NULL = {("runs", "seed"), ("runs", "memory_limit_bytes"), ("curve_points", "steps"), ("curve_points", "tokens")}

# The partial unique index that makes claiming a run key atomic (INSERT ... ON CONFLICT DO NOTHING).
RUNNING = "status = 'running'"


def upgrade() -> None:
    # SQLite stores every INTEGER in up to 8 bytes already; rewriting its tables would change nothing.
    if op.get_bind().dialect.name != "sqlite":
        for table, columns in BIG_COUNTS.items():
            for column in columns:
                op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(),
                                existing_nullable=(table, column) not in NOT_NULL)
    for name, type_ in (
        ("lease_holder", sa.String(200)), ("lease_expires", sa.DateTime(timezone=True)),
        ("heartbeat_at", sa.DateTime(timezone=True)), ("node", sa.String(200)), ("audits", sa.JSON()),
        ("cpu_seconds", sa.Float()), ("max_threads", sa.Integer()), ("train_seconds_paused_counted", sa.Boolean()),
    ):
        op.add_column("runs", sa.Column(name, type_))
    # Databases written by hand or by early versions may lack the version 1 indexes.
    for column in ("entry", "source_hash", "status"):
        op.create_index(f"ix_runs_{column}", "runs", [column], if_not_exists=True)
    op.create_index("ix_curve_points_run_id", "curve_points", ["run_id"], if_not_exists=True)
    # Before the unique index can exist, at most one row per key may be `running`: older harnesses
    # could leave several (abandoned ones); all but the newest become interrupted.
    op.execute(sa.text(
        "UPDATE runs SET status = 'interrupted', failure = 'interrupted', "
        "reason = COALESCE(reason, 'left running by an older harness; a newer run of the same key took over'), "
        "ended_at = COALESCE(ended_at, started_at) "
        "WHERE status = 'running' AND run_key IS NOT NULL AND id < "
        "(SELECT MAX(newer.id) FROM runs AS newer WHERE newer.run_key = runs.run_key AND newer.status = 'running')"
    ))
    op.create_index("uq_runs_running_key", "runs", ["run_key"], unique=True,
                    sqlite_where=sa.text(RUNNING), postgresql_where=sa.text(RUNNING))
    set_schema_version(3)

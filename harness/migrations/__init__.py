"""Schema versions of the results database as Alembic migrations, run programmatically.

Version N of the schema is Alembic revision "000N" (0001, 0002, ...), and every revision also
writes N into `harness_meta.schema_version`, the number older harness versions read: a harness
that predates Alembic still refuses a database it cannot read instead of misreading it.

No alembic.ini is needed: `upgrade()` builds the configuration in code and runs every step on the
caller's connection, inside the caller's transaction, so an upgrade is all or nothing (SQLite and
PostgreSQL both have transactional DDL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIGRATIONS_DIR = Path(__file__).resolve().parent


def revision_for(version: int) -> str:
    return f"{version:04d}"


def head_version() -> int:
    """The newest schema version these migrations know (the number in the head revision's id)."""
    from alembic.script import ScriptDirectory

    return int(ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head())


def upgrade(connection: Any, stored_version: int | None) -> None:
    """Bring the database on `connection` to the head revision.

    `stored_version` is the harness_meta version (None for an empty database). A database written
    before the migrations were Alembic's has no alembic_version table: it is stamped with the
    revision of its version first, so only the steps after it run.
    """
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    if stored_version is not None and not inspect(connection).has_table("alembic_version"):
        command.stamp(config, revision_for(stored_version))
    command.upgrade(config, "head")


def set_schema_version(version: int) -> None:
    """Inside a revision: record `version` where every harness version looks for it."""
    from alembic import op
    from sqlalchemy import text

    op.execute(text(f"UPDATE harness_meta SET value = '{int(version)}' WHERE key = 'schema_version'"))

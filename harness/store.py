"""The results database: SQLAlchemy 2 ORM models and the few operations the harness needs.

Every run, failed ones too, is a row of `runs`, written in its own transaction at each change of
state: created `running`, updated as the child reports, finished with its status. Validation
curve points live in `curve_points`. SQLite (the default) runs in WAL mode so a reader (the site,
`harness results`) never blocks a runner.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, create_engine, event, inspect, select, text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from harness.errors import RunStatus, StoreError

SCHEMA_VERSION = 2

# How to bring a database of version N - 1 up to version N, in order. Each step runs in one
# transaction with the version bump, so an upgrade is all or nothing.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE runs ADD COLUMN valid_accuracy FLOAT",
        "ALTER TABLE runs ADD COLUMN test_accuracy FLOAT",
        "ALTER TABLE runs ADD COLUMN run_key VARCHAR(64)",
        "ALTER TABLE runs ADD COLUMN division VARCHAR(40)",
        "ALTER TABLE runs ADD COLUMN hardware VARCHAR(300)",
        "ALTER TABLE runs ADD COLUMN config JSON",
        "ALTER TABLE runs ADD COLUMN git_commit VARCHAR(40)",
        "ALTER TABLE runs ADD COLUMN test_sentence_nll BLOB",
        "ALTER TABLE runs ADD COLUMN valid_sentence_nll BLOB",
        "ALTER TABLE runs ADD COLUMN isolation JSON",
        "CREATE INDEX IF NOT EXISTS ix_runs_track ON runs (track)",
        "CREATE INDEX IF NOT EXISTS ix_runs_run_key ON runs (run_key)",
    ),
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "harness_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    # What ran.
    entry: Mapped[str] = mapped_column(String(200), index=True)
    entry_kind: Mapped[str] = mapped_column(String(20), default="submission")
    entry_path: Mapped[str] = mapped_column(Text)
    source_hash: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(Text)
    display_name: Mapped[str | None] = mapped_column(String(200))
    authors: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    track: Mapped[str] = mapped_column(String(40), default="causal", index=True)
    hparams: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hparam_overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(Integer)
    run_key: Mapped[str | None] = mapped_column(String(64), index=True)
    """Digest of everything that determines the result: equal keys, reusable result."""
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The resolved competition config and options the run was started with."""
    # Where and under which limits.
    division: Mapped[str | None] = mapped_column(String(40))
    hardware: Mapped[str | None] = mapped_column(String(300))
    device: Mapped[str] = mapped_column(String(20))
    device_name: Mapped[str | None] = mapped_column(String(200))
    threads: Mapped[int | None] = mapped_column(Integer)
    budget_seconds: Mapped[float] = mapped_column(Float)
    memory_limit_bytes: Mapped[int] = mapped_column(Integer)
    eval_protocol: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    data_checksums: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # How it ended.
    status: Mapped[str] = mapped_column(String(20), index=True, default=RunStatus.RUNNING.value)
    failure: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str | None] = mapped_column(Text)
    checks: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Scores: perplexity with the number of tokens it is over, and the summed NLL behind it.
    valid_ppl: Mapped[float | None] = mapped_column(Float)
    valid_tokens: Mapped[int | None] = mapped_column(Integer)
    valid_nll_sum: Mapped[float | None] = mapped_column(Float)
    test_ppl: Mapped[float | None] = mapped_column(Float)
    test_tokens: Mapped[int | None] = mapped_column(Integer)
    test_nll_sum: Mapped[float | None] = mapped_column(Float)
    # mlm track only: top-1 accuracy on the masked positions.
    valid_accuracy: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    valid_sentence_nll: Mapped[bytes | None] = mapped_column(LargeBinary)
    test_sentence_nll: Mapped[bytes | None] = mapped_column(LargeBinary)
    """float32 little-endian: the NLL of each sentence of the split, for paired comparisons."""
    # What it spent.
    steps: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[float | None] = mapped_column(Float)
    tokens_trained: Mapped[int | None] = mapped_column(Integer)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    stop_reason: Mapped[str | None] = mapped_column(String(40))
    peak_memory_bytes: Mapped[int | None] = mapped_column(Integer)
    peak_gpu_memory_bytes: Mapped[int | None] = mapped_column(Integer)
    param_count: Mapped[int | None] = mapped_column(Integer)
    # Environment.
    harness_version: Mapped[str] = mapped_column(String(40))
    git_commit: Mapped[str | None] = mapped_column(String(40))
    torch_version: Mapped[str | None] = mapped_column(String(40))
    python_version: Mapped[str | None] = mapped_column(String(40))
    platform: Mapped[str | None] = mapped_column(Text)
    environment: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    isolation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The sandbox and memory enforcement the run had (see harness.sandbox)."""
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    runner_host: Mapped[str | None] = mapped_column(String(200))
    runner_pid: Mapped[int | None] = mapped_column(Integer)

    curve: Mapped[list[CurvePoint]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="CurvePoint.train_seconds"
    )

    def as_dict(self) -> dict[str, Any]:
        """Every column, JSON-friendly (datetimes as ISO strings), without the source text."""
        out = {}
        for column in self.__table__.columns:
            if column.key in ("source", "valid_sentence_nll", "test_sentence_nll"):
                continue
            value = getattr(self, column.key)
            out[column.key] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out


class CurvePoint(Base):
    __tablename__ = "curve_points"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    train_seconds: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    valid_ppl: Mapped[float] = mapped_column(Float)

    run: Mapped[Run] = relationship(back_populates="curve")


def database_url(db: str | os.PathLike[str]) -> str:
    """A path becomes a SQLite URL; anything with `://` is taken as a SQLAlchemy URL."""
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


class Store:
    def __init__(self, db: str | os.PathLike[str]) -> None:
        url = database_url(db)
        try:
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args=self._connect_args(parsed.get_backend_name()))
        except (ArgumentError, SQLAlchemyError, OSError, ImportError) as exc:
            raise StoreError(f"cannot open the results database {db!r}: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # Take the write lock when a transaction begins, not at its first write: a check-then-
            # insert (claiming a run) is then atomic across harness processes sharing the file.
            event.listen(self.engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._create_schema(db)

    @staticmethod
    def _connect_args(backend: str) -> dict[str, Any]:
        return {"timeout": 60} if backend == "sqlite" else {}

    def _create_schema(self, db: object) -> None:
        try:
            with self.engine.begin() as connection:
                existing = inspect(connection).has_table(Meta.__tablename__)
                version = self._stored_version(connection) if existing else None
            if version is not None and version != SCHEMA_VERSION:
                self._upgrade(db, version)
            Base.metadata.create_all(self.engine)
            with self.session() as session:
                if session.get(Meta, "schema_version") is None:
                    session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create tables in the results database {db}: {exc}") from exc

    @staticmethod
    def _stored_version(connection: Any) -> int | None:
        row = connection.execute(
            text("SELECT value FROM harness_meta WHERE key = 'schema_version'")
        ).first()
        return int(row[0]) if row else None

    def _upgrade(self, db: object, version: int) -> None:
        """Apply the migrations from `version` up, or refuse a database this harness cannot read."""
        if version > SCHEMA_VERSION or any(v not in MIGRATIONS for v in range(version + 1, SCHEMA_VERSION + 1)):
            raise StoreError(
                f"the results database {db} has schema version {version}; this harness reads version "
                f"{SCHEMA_VERSION} and cannot convert it. Use the harness version that wrote it, or a new --db."
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.engine.begin() as connection:
                for statement in MIGRATIONS[target]:
                    connection.execute(text(statement))
                connection.execute(text("UPDATE harness_meta SET value = :v WHERE key = 'schema_version'"),
                                   {"v": str(target)})

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    def start_run(self, **fields: Any) -> int:
        run = Run(status=RunStatus.RUNNING.value, started_at=utcnow(), runner_host=socket.gethostname(),
                  runner_pid=os.getpid(), **fields)
        with self.session() as session:
            session.add(run)
            session.flush()
            return run.id

    def claim_run(self, run_key: str, reuse: frozenset[str], **fields: Any) -> tuple[str, Run | int]:
        """Atomically decide what to do with a key: ("reuse", run), ("busy", run) or ("new", run id).

        A finished run whose status is in `reuse` is reused; a run of this key still `running` in a
        live harness process is left to it; otherwise a new `running` row is inserted, claimed.
        """
        with self.session() as session:
            latest = session.scalars(
                select(Run).where(Run.run_key == run_key).order_by(Run.id.desc()).limit(1)
            ).first()
            if latest is not None and latest.status == RunStatus.RUNNING.value and _owner_alive(latest):
                return "busy", latest
            if latest is not None and latest.status in reuse:
                return "reuse", latest
            run = Run(status=RunStatus.RUNNING.value, started_at=utcnow(), runner_host=socket.gethostname(),
                      runner_pid=os.getpid(), run_key=run_key, **fields)
            session.add(run)
            session.flush()
            return "new", run.id

    def update_run(self, run_id: int, **fields: Any) -> None:
        with self.session() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise StoreError(f"run {run_id} is not in the database")
            for key, value in fields.items():
                setattr(run, key, value)

    def add_curve_point(self, run_id: int, **fields: Any) -> None:
        with self.session() as session:
            session.add(CurvePoint(run_id=run_id, **fields))

    def finish_run(self, run_id: int, status: RunStatus, **fields: Any) -> None:
        self.update_run(run_id, status=status.value, ended_at=utcnow(), **fields)

    def mark_abandoned(self) -> int:
        """Runs left `running` by a harness process on this host that no longer exists."""
        host = socket.gethostname()
        with self.session() as session:
            stale = session.scalars(select(Run).where(Run.status == RunStatus.RUNNING.value)).all()
            count = 0
            for run in stale:
                if run.runner_host == host and not _owner_alive(run):
                    run.status = RunStatus.INTERRUPTED.value
                    run.failure = "interrupted"
                    run.reason = run.reason or "the harness process running it stopped before it finished"
                    run.ended_at = utcnow()
                    count += 1
            return count

    def get_run(self, run_id: int) -> Run | None:
        with self.session() as session:
            run = session.get(Run, run_id)
            if run is not None:
                run.curve  # load the curve while the session is open
            return run

    def runs(self) -> list[Run]:
        with self.session() as session:
            return list(session.scalars(select(Run).order_by(Run.id)).all())


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN IMMEDIATE itself
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _owner_alive(run: Run) -> bool:
    """Whether the harness process that is running `run` still exists (assumed so on other hosts)."""
    if run.runner_host != socket.gethostname():
        return True
    return bool(run.runner_pid) and _pid_alive(run.runner_pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

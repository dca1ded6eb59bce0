"""The results database: SQLAlchemy 2 ORM models and the few operations the harness needs.

Every run, failed ones too, is a row of `runs`, written in its own transaction at each change of
state: claimed `running`, updated as the child reports, finished with its status. Validation
curve points live in `curve_points`. SQLite (the default) and PostgreSQL are supported.

Claims and leases. A run key has at most one `running` row: a partial unique index enforces it,
and `claim_run` inserts with ON CONFLICT DO NOTHING, so two drivers (on one machine or many) can
never both run a key. The claiming driver holds a lease on the row (`lease_holder`,
`lease_expires`), renewed every `heartbeat_seconds` (a quarter of the lease, 15 s for the default
60 s lease): by the Store itself from a daemon thread for every run it claimed and has not finished
(`keep_alive=True`, the default), or by the driver calling `heartbeat` (`keep_alive=False`). A
driver that crashes stops renewing, and once its lease has expired any driver turns the row
`interrupted` (`mark_abandoned`, or `claim_run` of that key). On the claiming machine itself a
dead driver process is recognised at once by its pid.

Reads never block writers: SQLite runs in WAL mode, a writing session takes the write lock when it
begins (BEGIN IMMEDIATE, so claim checks are atomic), and a read-only store (`read_only=True`:
`harness results`, `show`, `site`) opens the file with `mode=ro` and plain deferred transactions,
so it takes no write lock at all. PostgreSQL readers use read-only transactions (MVCC).

Schema versions are Alembic migrations in harness/migrations, applied on open.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
from sqlalchemy import (
    JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, TypeDecorator,
    create_engine, delete, event, func, inspect, select, text, update,
)
from sqlalchemy.engine import Engine, URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from harness.errors import FailureKind, LeaseLost, RunStatus, StoreError, encodable, redact_url

SCHEMA_VERSION = 3
"""The schema these models describe: Alembic revision 0003 (harness/migrations/versions)."""

DEFAULT_LEASE_SECONDS = 60.0
"""How long a claim stays valid without a heartbeat; renew it every quarter of this."""

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
POSTGRES_EXTRA = "pip install -e '.[postgres]'"
# An arbitrary constant: PostgreSQL advisory lock that serialises schema upgrades between drivers.
_SCHEMA_LOCK = 0x70746268  # "ptbh"
def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A point in time, stored in UTC and read back as an aware UTC datetime on every backend.

    PostgreSQL's timestamptz returns aware datetimes, SQLite returns naive ones: without this the
    same results read differently (`11:00` against `11:00+00:00`) depending on the database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return self.process_bind_param(value, dialect)


def _clean(value: Any) -> Any:
    """A value PostgreSQL and SQLite both store: valid UTF-8 without NUL in text (a lone surrogate
    becomes U+FFFD), no non-finite float inside JSON."""
    if isinstance(value, str):
        return encodable(value).replace("\x00", "")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_clean(k) if isinstance(k, str) else k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class SafeString(TypeDecorator[str]):
    """Text that a participant may have written (a name, a log, a reason): NUL bytes dropped and cut
    to the column's length, so no entry can make the database refuse its row."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        text = _clean(str(value))
        return text[: self.impl.length] if self.impl.length else text


class SafeText(SafeString):
    impl = Text
    cache_ok = True


class SafeJSON(TypeDecorator[Any]):
    """JSON that may hold a child's values: NUL-free strings, non-finite floats as null."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return _clean(value)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "harness_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        # At most one `running` row per key: what makes claim_run's insert atomic on every backend.
        Index("uq_runs_running_key", "run_key", unique=True,
              sqlite_where=text("status = 'running'"), postgresql_where=text("status = 'running'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # What ran.
    entry: Mapped[str] = mapped_column(SafeString(200), index=True)
    entry_kind: Mapped[str] = mapped_column(SafeString(20), default="submission")
    entry_path: Mapped[str] = mapped_column(SafeText)
    source_hash: Mapped[str] = mapped_column(SafeString(64), index=True)
    source: Mapped[str] = mapped_column(SafeText)
    display_name: Mapped[str | None] = mapped_column(SafeString(200))
    authors: Mapped[str | None] = mapped_column(SafeText)
    description: Mapped[str | None] = mapped_column(SafeText)
    track: Mapped[str] = mapped_column(SafeString(40), default="causal", index=True)
    hparams: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    hparam_overrides: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    seed: Mapped[int] = mapped_column(BigInteger)
    run_key: Mapped[str | None] = mapped_column(SafeString(64), index=True)
    """Digest of everything that determines the result: equal keys, reusable result."""
    config: Mapped[dict[str, Any] | None] = mapped_column(SafeJSON)
    """The resolved competition config and options the run was started with."""
    # Where and under which limits.
    division: Mapped[str | None] = mapped_column(SafeString(40))
    hardware: Mapped[str | None] = mapped_column(SafeString(300))
    device: Mapped[str] = mapped_column(SafeString(20))
    device_name: Mapped[str | None] = mapped_column(SafeString(200))
    threads: Mapped[int | None] = mapped_column(Integer)
    budget_seconds: Mapped[float] = mapped_column(Float)
    memory_limit_bytes: Mapped[int] = mapped_column(BigInteger)
    eval_protocol: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    data_checksums: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    # How it ended.
    status: Mapped[str] = mapped_column(SafeString(20), index=True, default=RunStatus.RUNNING.value)
    failure: Mapped[str | None] = mapped_column(SafeString(40))
    reason: Mapped[str | None] = mapped_column(SafeText)
    traceback: Mapped[str | None] = mapped_column(SafeText)
    log_tail: Mapped[str | None] = mapped_column(SafeText)
    checks: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    # Scores: perplexity with the number of tokens it is over, and the summed NLL behind it.
    valid_ppl: Mapped[float | None] = mapped_column(Float)
    valid_tokens: Mapped[int | None] = mapped_column(BigInteger)
    valid_nll_sum: Mapped[float | None] = mapped_column(Float)
    test_ppl: Mapped[float | None] = mapped_column(Float)
    test_tokens: Mapped[int | None] = mapped_column(BigInteger)
    test_nll_sum: Mapped[float | None] = mapped_column(Float)
    # mlm track only: top-1 accuracy on the masked positions.
    valid_accuracy: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    valid_sentence_nll: Mapped[bytes | None] = mapped_column(LargeBinary)
    test_sentence_nll: Mapped[bytes | None] = mapped_column(LargeBinary)
    """float32 little-endian: the NLL of each sentence of the split, for paired comparisons."""
    # What it spent.
    steps: Mapped[int | None] = mapped_column(BigInteger)
    epochs: Mapped[float | None] = mapped_column(Float)
    tokens_trained: Mapped[int | None] = mapped_column(BigInteger)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    stop_reason: Mapped[str | None] = mapped_column(SafeString(40))
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    param_count: Mapped[int | None] = mapped_column(BigInteger)
    # Environment.
    harness_version: Mapped[str] = mapped_column(SafeString(40))
    git_commit: Mapped[str | None] = mapped_column(SafeString(40))
    torch_version: Mapped[str | None] = mapped_column(SafeString(40))
    python_version: Mapped[str | None] = mapped_column(SafeString(40))
    platform: Mapped[str | None] = mapped_column(SafeText)
    environment: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    isolation: Mapped[dict[str, Any] | None] = mapped_column(SafeJSON)
    """The sandbox and memory enforcement the run had (see harness.sandbox)."""
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    runner_host: Mapped[str | None] = mapped_column(SafeString(200))
    runner_pid: Mapped[int | None] = mapped_column(Integer)
    """The host and pid of the driver that claimed the run (the lease holder's process)."""
    # The claim: who holds it and until when (see the module docstring).
    lease_holder: Mapped[str | None] = mapped_column(SafeString(200))
    lease_expires: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    node: Mapped[str | None] = mapped_column(SafeString(200))
    """Where the run executed (the driver's host for local runs, the cluster node for placed ones)."""
    audits: Mapped[dict[str, Any] | None] = mapped_column(SafeJSON)
    """Counts of causality audits and replay probes the run went through."""
    cpu_seconds: Mapped[float | None] = mapped_column(Float)
    max_threads: Mapped[int | None] = mapped_column(Integer)
    train_seconds_paused_counted: Mapped[bool | None] = mapped_column(Boolean)
    """True where no freezer was available, so the pauses were counted as training time."""

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
    steps: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    valid_ppl: Mapped[float] = mapped_column(Float)

    run: Mapped[Run] = relationship(back_populates="curve")


def database_url(db: str | os.PathLike[str]) -> str:
    """A path becomes a SQLite URL; anything with `://` is taken as a SQLAlchemy URL.

    `postgresql://` and `postgres://` name psycopg 3 (the `postgres` extra), not SQLAlchemy's
    default psycopg2, which the harness does not depend on.
    """
    text_ = str(db)
    if "://" not in text_:
        return f"sqlite:///{Path(text_).expanduser().resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if text_.startswith(prefix):
            return "postgresql+psycopg://" + text_[len(prefix):]
    return text_


def _scrub(message: str, url: URL | None) -> str:
    """A driver's error message with the URL's password removed, wherever the driver echoed it."""
    secrets = [url.password, url.query.get("password")] if url is not None else []
    for secret in secrets:
        if isinstance(secret, str) and secret:
            message = message.replace(secret, "***")
    return message


_HOLDER: str | None = None


def default_holder() -> str:
    """This process's lease-holder id: host, pid and a random part (pids repeat, across hosts too)."""
    global _HOLDER
    if _HOLDER is None or _HOLDER.split("/")[1] != str(os.getpid()):  # a forked child gets its own
        _HOLDER = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
    return _HOLDER


_RUNNING = RunStatus.RUNNING.value
_LEASE_EXPIRED = "its harness stopped renewing the claim (the lease expired) before the run finished"
_DRIVER_GONE = "the harness process running it stopped before it finished"


class Store:
    """The results database at `db` (a path for SQLite, or a SQLAlchemy URL for PostgreSQL).

    `read_only=True` opens it for reading only (results, show, site): no write lock is ever taken,
    so a reader cannot make a writer wait or fail. `holder` names this driver in the runs it claims
    (default: host/pid/random); `lease_seconds` is how long a claim lasts without a heartbeat;
    `keep_alive` renews the leases of this Store's unfinished claims from a daemon thread (turn it
    off only where the caller heartbeats itself, or to let claims lapse on purpose in tests).
    """

    def __init__(self, db: str | os.PathLike[str], read_only: bool = False, holder: str | None = None,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, keep_alive: bool = True) -> None:
        self.shown = redact_url(db)
        """The database as messages may show it (password masked)."""
        self.read_only = read_only
        self.holder = holder or default_holder()
        self.lease_seconds = float(lease_seconds)
        self.url = self._parse(db)
        self.engine = self._open(self.url, read_only)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._prepare_schema()
        self._keep_alive = _KeepAlive(self) if keep_alive and not read_only else None

    @property
    def heartbeat_seconds(self) -> float:
        """How often a driver should call `heartbeat` for each run it holds: a quarter of the lease,
        so three heartbeats in a row can be missed (a busy machine, a database restart) safely."""
        return self.lease_seconds / 4

    # -- opening ---------------------------------------------------------------------------------

    def _parse(self, db: str | os.PathLike[str]) -> URL:
        try:
            url = make_url(database_url(db))
        except ArgumentError as exc:
            raise StoreError(f"cannot open the results database {self.shown}: not a path or database URL") from exc
        backend = url.get_backend_name()
        if backend not in SUPPORTED_BACKENDS:
            raise StoreError(f"cannot open the results database {self.shown}: {backend!r} databases are not "
                             "supported; give a SQLite file path or a postgresql+psycopg:// URL")
        return url

    def _open(self, url: URL, read_only: bool) -> Engine:
        try:
            if url.get_backend_name() == "sqlite":
                return _sqlite_engine(url, read_only)
            engine = create_engine(url, pool_pre_ping=True)
            # PostgreSQL readers never block writers (MVCC); read-only transactions also refuse writes.
            return engine.execution_options(postgresql_readonly=True) if read_only else engine
        except ImportError as exc:
            raise StoreError(f"cannot open the results database {self.shown}: its driver is not installed "
                             f"({exc.name or exc}); for PostgreSQL install the extra: {POSTGRES_EXTRA}") from exc
        except (ArgumentError, SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot open the results database {self.shown}: {_scrub(str(exc), url)}") from exc

    def _prepare_schema(self) -> None:
        """Create or upgrade the schema to SCHEMA_VERSION, or refuse a newer database."""
        try:
            if self.read_only:
                with self.engine.connect() as connection:
                    version = _stored_version(connection, self.shown)
                self._refuse_newer(version)
                if version != SCHEMA_VERSION:
                    # An older (or empty) database is upgraded once through a short-lived writer.
                    writer = self._open(self.url, read_only=False)
                    try:
                        self._upgrade(writer)
                    finally:
                        writer.dispose()
            else:
                self._upgrade(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot prepare the tables of the results database {self.shown}: "
                             f"{_scrub(str(exc), self.url)}") from exc

    def _upgrade(self, engine: Engine) -> None:
        from alembic.util import CommandError

        from harness import migrations

        with engine.begin() as connection:  # SQLite: BEGIN IMMEDIATE, one upgrader at a time
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            version = _stored_version(connection, self.shown)
            self._refuse_newer(version)
            if version == SCHEMA_VERSION:
                return
            try:
                migrations.upgrade(connection, version)
            except CommandError as exc:
                raise StoreError(f"cannot upgrade the results database {self.shown} from schema version "
                                 f"{version}: {exc}") from exc

    def _refuse_newer(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"the results database {self.shown} has schema version {version}; this harness reads version "
                f"{SCHEMA_VERSION} and cannot convert it. Use the harness version that wrote it, or a new --db."
            )

    def close(self) -> None:
        """Stop renewing leases and close the pooled connections (the Store reconnects if used again;
        its claims then lapse unless the caller heartbeats them)."""
        if self._keep_alive is not None:
            self._keep_alive.stop()
        self.engine.dispose()

    def _hold(self, run_id: int, holder: str | None, lease_seconds: float | None) -> None:
        if self._keep_alive is not None:
            self._keep_alive.hold(run_id, holder or self.holder, lease_seconds or self.lease_seconds)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"the results database {self.shown} was opened read-only")

    # -- writing runs ----------------------------------------------------------------------------

    def _lease_fields(self, now: dt.datetime, holder: str | None, lease_seconds: float | None) -> dict[str, Any]:
        return dict(status=_RUNNING, started_at=now, runner_host=socket.gethostname(), runner_pid=os.getpid(),
                    lease_holder=holder or self.holder, heartbeat_at=now,
                    lease_expires=now + dt.timedelta(seconds=lease_seconds or self.lease_seconds))

    def start_run(self, holder: str | None = None, lease_seconds: float | None = None, **fields: Any) -> int:
        """Insert a `running` row held by `holder`, without the reuse decision of `claim_run`."""
        self._writable()
        run = Run(**self._lease_fields(utcnow(), holder, lease_seconds), **fields)
        try:
            with self.session() as session:
                session.add(run)
                session.flush()
                run_id = run.id
        except IntegrityError as exc:
            raise StoreError(f"run key {fields.get('run_key')} is already being run (claim it with claim_run)") from exc
        self._hold(run_id, holder, lease_seconds)
        return run_id

    def claim_run(self, run_key: str, reuse: frozenset[str], holder: str | None = None,
                  lease_seconds: float | None = None, **fields: Any) -> tuple[str, Run | int]:
        """Atomically decide what to do with a key: ("reuse", run), ("busy", run) or ("new", run id).

        A finished run whose status is in `reuse` is reused; a run of this key still `running`
        under a live lease is left to its holder ("busy"); otherwise a new `running` row is inserted
        and held by `holder` for `lease_seconds` (renew it with `heartbeat`). The insert goes through
        the unique index on running keys (ON CONFLICT DO NOTHING), so of two drivers claiming one
        key at once, on any backend and any machine, exactly one gets "new".
        """
        self._writable()
        for _attempt in range(5):
            with self.session() as session:
                decision = self._claim(session, run_key, reuse, holder, lease_seconds, fields)
            if decision is not None:
                if decision[0] == "new":
                    self._hold(decision[1], holder, lease_seconds)
                return decision
        raise StoreError(f"could not claim run key {run_key}: its running row kept changing under the claim")

    def _claim(self, session: Session, run_key: str, reuse: frozenset[str], holder: str | None,
               lease_seconds: float | None, fields: dict[str, Any]) -> tuple[str, Run | int] | None:
        now = utcnow()
        self._interrupt_stale(session, now, run_key)
        reusable = _reusable(session, run_key, reuse)
        if reusable is not None:
            return "reuse", reusable
        values = {**fields, **self._lease_fields(now, holder, lease_seconds), "run_key": run_key}
        new_id = session.execute(_insert_ignoring_conflicts(session, values)).scalar()
        if new_id is None:
            busy = session.scalars(select(Run).where(Run.run_key == run_key, Run.status == _RUNNING)).first()
            return ("busy", busy) if busy is not None else None  # None: it finished meanwhile; decide again
        # A run of this key may have finished between the check above and the insert (PostgreSQL
        # reads committed data per statement): check again now that the claim is ours.
        reusable = _reusable(session, run_key, reuse, exclude=new_id)
        if reusable is not None:
            session.execute(delete(Run).where(Run.id == new_id))
            return "reuse", reusable
        return "new", new_id

    def heartbeat(self, run_id: int, holder: str | None = None, lease_seconds: float | None = None) -> bool:
        """Extend `holder`'s lease on a running run; False when the claim is no longer its own (the
        run finished, or its lease expired and another driver marked it interrupted)."""
        self._writable()
        now = utcnow()
        with self.session() as session:
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == _RUNNING, Run.lease_holder == (holder or self.holder))
                .values(heartbeat_at=now, lease_expires=now + dt.timedelta(seconds=lease_seconds or self.lease_seconds))
                .execution_options(synchronize_session=False))
            return result.rowcount == 1

    def renew_held(self, run_id: int, holder: str | None = None) -> None:
        """Renew `holder`'s (default: this driver's) lease on a run, or raise LeaseLost saying who has it now."""
        if not self.heartbeat(run_id, holder):
            with self.session() as session:
                raise LeaseLost(self._lost_reason(session, run_id, holder or self.holder))

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set columns of any run, whoever holds it (an organiser's `disqualify`). A driver writing
        to a run it claimed uses `update_held` / `finish_run`, which refuse a lost claim."""
        self._writable()
        with self.session() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise StoreError(f"run {run_id} is not in the database")
            for key, value in fields.items():
                setattr(run, key, value)

    def update_held(self, run_id: int, holder: str | None = None, **fields: Any) -> None:
        """Set columns of a run `holder` (default: this driver) holds, in one conditional UPDATE:
        a driver whose lease lapsed (stalled, partitioned from the database) while another driver
        turned the row `interrupted` and took the key over must not write its late result over
        that decision. Raises LeaseLost, and the row stays as the other driver left it. The lease
        itself is renewed only by `heartbeat` (the keep-alive thread), with the claim's own length."""
        self._writable()
        with self.session() as session:
            self._write_held(session, run_id, holder or self.holder, fields)
        if fields.get("status", _RUNNING) != _RUNNING and self._keep_alive is not None:
            self._keep_alive.release(run_id)

    def _write_held(self, session: Session, run_id: int, holder: str, values: dict[str, Any]) -> None:
        """The one conditional UPDATE every write to a claimed run goes through: on (still running,
        held by `holder`), or LeaseLost. It locks the row (PostgreSQL) or runs inside the write lock
        (SQLite), so no takeover slips in before the rest of the session's transaction."""
        result = session.execute(
            update(Run).where(Run.id == run_id, Run.status == _RUNNING, Run.lease_holder == holder)
            .values(**values).execution_options(synchronize_session=False))
        if result.rowcount != 1:
            raise LeaseLost(self._lost_reason(session, run_id, holder))

    def _lost_reason(self, session: Session, run_id: int, holder: str) -> str:
        run = session.get(Run, run_id)
        if run is None:
            return f"run {run_id} is not in the database"
        return (f"run {run_id} is no longer held by this harness ({holder}): it is {run.status}"
                + (f" ({run.reason})" if run.reason else "") + "; this driver's late write was not stored")

    def add_curve_point(self, run_id: int, holder: str | None = None, **fields: Any) -> None:
        """Add a validation point to a run `holder` (default: this driver) holds (LeaseLost otherwise)."""
        self._writable()
        holder = holder or self.holder
        with self.session() as session:
            self._write_held(session, run_id, holder, {"lease_holder": holder})  # a no-op write: the check and the lock
            session.add(CurvePoint(run_id=run_id, **fields))

    def finish_run(self, run_id: int, status: RunStatus, holder: str | None = None, **fields: Any) -> None:
        """Record how a run `holder` (default: this driver) holds ended (LeaseLost if it no longer does)."""
        self.update_held(run_id, holder, status=status.value, ended_at=utcnow(), **fields)

    def mark_abandoned(self) -> int:
        """Turn `running` runs whose driver is gone into `interrupted`; return how many.

        Gone means: its lease expired (whichever machine claimed it), or it was claimed on this
        host by a process that no longer exists. Runs written before leases existed (no expiry)
        are judged by the second rule only.
        """
        self._writable()
        with self.session() as session:
            return self._interrupt_stale(session, utcnow())

    def _interrupt_stale(self, session: Session, now: dt.datetime, run_key: str | None = None) -> int:
        running = [Run.status == _RUNNING] + ([Run.run_key == run_key] if run_key is not None else [])
        expired = _interrupt(session, now, _LEASE_EXPIRED, *running, Run.lease_expires.is_not(None),
                             Run.lease_expires < now)
        here = Run.runner_host == socket.gethostname()
        local = session.execute(select(Run.id, Run.runner_pid).where(*running, here)).all()
        dead = [run_id for run_id, pid in local if not (pid and psutil.pid_exists(pid))]
        return expired + (_interrupt(session, now, _DRIVER_GONE, Run.id.in_(dead)) if dead else 0)

    # -- reading ---------------------------------------------------------------------------------

    def reusable(self, run_key: str, reuse: frozenset[str]) -> Run | None:
        """The finished run `claim_run` would reuse for this key now, or None (it would run)."""
        with self.session() as session:
            found = _reusable(session, run_key, reuse)
            if found is not None:
                session.expunge(found)
            return found

    def get_run(self, run_id: int) -> Run | None:
        with self.session() as session:
            run = session.get(Run, run_id)
            if run is not None:
                run.curve  # load the curve while the session is open
            return run

    def runs(self) -> list[Run]:
        with self.session() as session:
            return list(session.scalars(select(Run).order_by(Run.id)).all())


class _KeepAlive:
    """Renews the leases of the runs a Store claimed and has not finished, from a daemon thread.

    The thread dies with the process, so the leases of a killed driver lapse on their own. A failed
    renewal (the database briefly unreachable) is retried at the next beat: a lease spans four."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._held: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, run_id: int, holder: str, lease_seconds: float) -> None:
        with self._lock:
            self._held[run_id] = (holder, lease_seconds)
            if self._thread is None or not self._thread.is_alive():
                self._stopped.clear()
                self._thread = threading.Thread(target=self._beat, name="harness-lease-keep-alive", daemon=True)
                self._thread.start()

    def release(self, run_id: int) -> None:
        with self._lock:
            self._held.pop(run_id, None)

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            self._held.clear()

    def _beat(self) -> None:
        while True:
            with self._lock:
                held = dict(self._held)
            interval = min([lease for _, lease in held.values()] + [self._store.lease_seconds]) / 4
            if self._stopped.wait(interval):
                return
            for run_id, (holder, lease_seconds) in held.items():
                try:
                    still_held = self._store.heartbeat(run_id, holder, lease_seconds)
                except SQLAlchemyError:
                    continue
                if not still_held:  # finished elsewhere, or lost: nothing left to renew
                    self.release(run_id)


def _stored_version(connection: Any, shown: str) -> int | None:
    """The schema version recorded in the database; None for an empty database."""
    tables = inspect(connection)
    if tables.has_table(Meta.__tablename__):
        row = connection.execute(text("SELECT value FROM harness_meta WHERE key = 'schema_version'")).first()
        if row is not None:
            return int(row[0])
    elif not tables.has_table(Run.__tablename__):
        return None
    raise StoreError(f"the results database {shown} has harness tables but no schema version; "
                     "it was not written by the harness, or not completely. Use a new --db.")


def _reusable(session: Session, run_key: str, reuse: frozenset[str], exclude: int | None = None) -> Run | None:
    """The latest finished run of the key, if its status is one to reuse. A fault of the harness
    itself (`harness_error`) is never the entry's result: never reused, the key runs again."""
    query = select(Run).where(Run.run_key == run_key, Run.status != _RUNNING)
    if exclude is not None:
        query = query.where(Run.id != exclude)
    latest = session.scalars(query.order_by(Run.id.desc()).limit(1)).first()
    if latest is None or latest.status not in reuse or latest.failure == FailureKind.HARNESS_ERROR.value:
        return None
    return latest


def _insert_ignoring_conflicts(session: Session, values: dict[str, Any]) -> Any:
    """INSERT INTO runs ... ON CONFLICT DO NOTHING RETURNING id, in the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(Run.__table__).values(**values).on_conflict_do_nothing().returning(Run.__table__.c.id)


def _interrupt(session: Session, now: dt.datetime, reason: str, *where: Any) -> int:
    result = session.execute(
        update(Run).where(*where)
        .values(status=RunStatus.INTERRUPTED.value, failure="interrupted",
                reason=func.coalesce(Run.reason, reason), ended_at=now)
        .execution_options(synchronize_session=False))
    return result.rowcount


def _sqlite_engine(url: URL, read_only: bool) -> Engine:
    path = url.database or ""
    if read_only:
        # mode=ro: this connection cannot write, so it never takes SQLite's write lock.
        uri = f"file:{quote(path)}?mode=ro"
        engine = create_engine(url, creator=lambda: sqlite3.connect(uri, uri=True, timeout=60,
                                                                     check_same_thread=False))
    else:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
    event.listen(engine, "connect", lambda connection, _record: _sqlite_pragmas(connection, read_only))
    # A writer takes the write lock when its transaction begins, not at its first write, so a
    # check-then-write is atomic across processes; a reader begins a plain deferred transaction
    # (one consistent WAL snapshot, no lock that a writer could wait on).
    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql(begin))
    return engine


def _sqlite_pragmas(connection: Any, read_only: bool) -> None:
    connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
    cursor = connection.cursor()
    if read_only:
        cursor.execute("PRAGMA query_only=ON")
    else:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()



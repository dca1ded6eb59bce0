"""The plan `harness run` prints before any work: what runs, what is reused, and how long it may take.

The estimate of a run's wall time is its budget plus what the budget does not cover (starting the
sandboxes, validation passes, final scoring), learned from the newest finished run of the same entry
in the database where there is one, else a default for this machine's class of work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from harness.errors import RunStatus
from harness.store import Run, Store

DEFAULT_OVERHEAD_SECONDS = 90.0  # start-up, validation passes and scoring both splits of a small model


@dataclass
class PlannedRun:
    request: Any
    action: str
    """`run` or `reuse` (a finished result of the same key exists and is reused)."""
    seconds: float
    learned: bool
    reused_status: str | None = None


@dataclass
class Plan:
    runs: list[PlannedRun] = field(default_factory=list)
    side_by_side: int = 1
    """Runs out at once (local --jobs): the estimate places them on that many slots."""

    @property
    def to_run(self) -> list[PlannedRun]:
        return [run for run in self.runs if run.action == "run"]

    @property
    def seconds(self) -> float:
        """Wall time: each run, in order, starts on the first slot to come free."""
        slots = [0.0] * max(1, self.side_by_side)
        for run in self.to_run:
            slots[slots.index(min(slots))] += run.seconds
        return max(slots)

    def describe(self, division: str) -> str:
        reused = [run for run in self.runs if run.action == "reuse"]
        failed = [run for run in reused if run.reused_status not in (RunStatus.OK.value, RunStatus.INVALID.value)]
        learned = sum(run.learned for run in self.to_run)
        lines = [f"plan: {len(self.to_run)} run(s) to start, {len(reused)} finished result(s) to reuse, "
                 f"division {division}; "
                 + (f"{self.side_by_side} at a time, each on its own CPUs; " if self.side_by_side > 1 else "")
                 + f"estimated wall time {_duration(self.seconds)}"
                 + (f" ({learned} estimate(s) learned from earlier runs of the same entry)" if learned else "")]
        if failed:
            lines.append(f"  {len(failed)} result(s) to reuse did not end ok; `--retry-failed` runs them again")
        for planned in self.to_run:
            request = planned.request
            lines.append(f"  run  {request.entry.name} seed {request.seed}: budget {request.limits.seconds:g} s, "
                         f"~{_duration(planned.seconds)}")
        return "\n".join(lines)


def make_plan(store: Store, requests: list[Any], checksums: dict[str, str], reuse: frozenset[str],
              side_by_side: int = 1) -> Plan:
    """What `claim_run` will do with each request (the store's own reuse rule), and estimates
    learned once per entry. `store` may be read-only: planning takes no write lock."""
    plan = Plan(side_by_side=side_by_side)
    estimates: dict[tuple[str, float], tuple[float, bool]] = {}
    for request in requests:
        found = store.reusable(request.key(checksums), reuse)
        if found is not None:
            plan.runs.append(PlannedRun(request, "reuse", 0.0, False, found.status))
            continue
        key = (request.entry.name, request.limits.seconds)
        if key not in estimates:
            with store.session() as session:
                estimates[key] = _estimate(session, *key)
        plan.runs.append(PlannedRun(request, "run", *estimates[key]))
    return plan


def _estimate(session: Any, entry: str, budget: float) -> tuple[float, bool]:
    """Wall seconds for a run of `entry` with `budget`: from its newest finished ok run (its whole wall
    time where training stopped on its own, else this budget plus what that run spent beyond
    training), or the budget plus a default."""
    run = session.scalars(select(Run).where(Run.entry == entry, Run.status == RunStatus.OK.value,
                                            Run.ended_at.is_not(None)).order_by(Run.id.desc()).limit(1)).first()
    if run is None or run.started_at is None or run.train_seconds is None:
        return budget + DEFAULT_OVERHEAD_SECONDS, False
    wall = (run.ended_at - run.started_at).total_seconds()
    if run.stop_reason in ("max_epochs", "max_steps") and run.train_seconds < budget:
        return wall, True
    return budget + max(0.0, wall - run.train_seconds), True


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""The supervisor's training clock: wall time of the trainer, minus the time it spent frozen.

Only the supervisor reads it and only the supervisor moves it: it starts when the trainer reports
that its interpreter is up (the first message, sent before any participant code is imported), and
pauses only while the trainer's cgroup is frozen for a validation pass. No message from a child
can start, pause or stop it.
"""

from __future__ import annotations

import time


class TrainingClock:
    def __init__(self) -> None:
        self.started: float | None = None
        self.paused_total = 0.0
        self.paused_since: float | None = None
        self.stopped_at: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def pause(self) -> None:
        if self.paused_since is None:
            self.paused_since = time.monotonic()

    def resume(self) -> None:
        if self.paused_since is not None:
            self.paused_total += time.monotonic() - self.paused_since
            self.paused_since = None

    def stop(self) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        now = self.stopped_at or self.paused_since or time.monotonic()
        return now - self.started - self.paused_total

    def deadline(self, limit_seconds: float) -> float:
        """The monotonic time at which `elapsed` reaches `limit_seconds`, if the clock keeps running."""
        return time.monotonic() + max(0.0, limit_seconds - self.elapsed)

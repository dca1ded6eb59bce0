"""Errors the library raises, and the vocabulary of run outcomes.

Library code raises a `HarnessError` subclass; only `harness.cli` turns one into a message and an
exit code. Every message says what failed, where, and how to fix it.
"""

from __future__ import annotations

import enum
import re


class HarnessError(Exception):
    """Base class of every error the harness reports to a user."""

    exit_code = 3


class DataError(HarnessError):
    """The PTB files are missing, corrupt or could not be downloaded."""


class EntryError(HarnessError):
    """An entry could not be found, imported or does not follow the contract."""


class HparamError(HarnessError):
    """A hyper-parameter override names an unknown key or has a value of the wrong type."""

    exit_code = 2


class ConfigError(HarnessError):
    """A budget, memory size, device or other option is malformed."""

    exit_code = 2


class StoreError(HarnessError):
    """The results database cannot be opened or written."""


class LeaseLost(StoreError):
    """A driver wrote to a run it no longer holds: its lease expired and another driver turned the
    row `interrupted` (and may be running the key again). The write is refused, not merged."""


class RunStatus(str, enum.Enum):
    """How a run ended. `running` only while it is in flight."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    INVALID = "invalid"
    INTERRUPTED = "interrupted"


class FailureKind(str, enum.Enum):
    """Why a run did not end `ok`: one taxonomy for the runner, the database and the CLI."""

    IMPORT_ERROR = "import_error"
    CONTRACT_VIOLATION = "contract_violation"
    RUNTIME_ERROR = "runtime_error"
    NON_FINITE = "non_finite"
    INVALID_OUTPUT = "invalid_output"
    CAUSALITY_VIOLATION = "causality_violation"
    WEIGHTS_MODIFIED = "weights_modified"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    SANDBOX_VIOLATION = "sandbox_violation"
    INTERRUPTED = "interrupted"
    HARNESS_ERROR = "harness_error"
    DISQUALIFIED = "disqualified"
    """Set by an organiser (`harness disqualify`), never by the runner."""

    @property
    def status(self) -> RunStatus:
        """The run status this kind of failure ends in."""
        return _STATUS_OF_FAILURE.get(self, RunStatus.FAILED)


_STATUS_OF_FAILURE = {
    FailureKind.INVALID_OUTPUT: RunStatus.INVALID,
    FailureKind.CAUSALITY_VIOLATION: RunStatus.INVALID,
    FailureKind.WEIGHTS_MODIFIED: RunStatus.INVALID,
    FailureKind.DISQUALIFIED: RunStatus.INVALID,
    FailureKind.TIMEOUT: RunStatus.TIMEOUT,
    FailureKind.OUT_OF_MEMORY: RunStatus.OUT_OF_MEMORY,
    FailureKind.INTERRUPTED: RunStatus.INTERRUPTED,
}


class EntryFailure(Exception):
    """Raised inside a run when the entry (not the harness) is at fault.

    Not a `HarnessError`: it never reaches the CLI directly; the worker reports it and the run is
    recorded with `kind` and this message as its reason.
    """

    def __init__(self, kind: FailureKind, reason: str, traceback: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.traceback = traceback


# scheme://user:password@host -> scheme://user:***@host, and ...?password=x -> ...?password=***; a URL
# may sit anywhere in a message.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<password>[^@\s]*)(?P<at>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&\s]*", re.IGNORECASE)


def redact_url(text: object) -> str:
    """`text` (a message, a database path or URL) with every URL's password replaced by `***`,
    in the user part or as a query parameter, so no message or log leaks one."""
    masked = _URL_PASSWORD.sub(lambda m: m.group("head") + "***" + m.group("at"), str(text))
    return _QUERY_PASSWORD.sub(lambda m: m.group("head") + "***", masked)


def encodable(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (`"\\ud800"` in a source, or escaped in a child's JSON)
    becomes U+FFFD. Unchanged, it cannot be written to the database, a terminal or a page."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")

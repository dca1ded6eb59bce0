"""The supervisor's side of the channel: frames, message schemas, and what a child may claim.

Every frame a sandboxed process sends is read here with size caps and checked against the schema
of its type before anything looks at it. A frame that fails ends that run with a reason naming
the message; nothing a child sends can raise past this module. Children never send payloads:
token ids travel only from the supervisor to a child, and log-prob rows come back through shared
memory that the supervisor copies and checks itself (`harness.scoring`).
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Callable
from typing import Any

from harness.errors import FailureKind

HEADER = struct.Struct("<II")
MAX_MESSAGE_BYTES = 1 << 20
SEND_TIMEOUT_SECONDS = 60.0

# Kinds a child may report about itself. A claim only ends its own run; it can never claim a
# success, a timeout, an interruption or a fault of the harness.
CHILD_KINDS = frozenset({FailureKind.IMPORT_ERROR, FailureKind.CONTRACT_VIOLATION, FailureKind.RUNTIME_ERROR,
                         FailureKind.NON_FINITE, FailureKind.INVALID_OUTPUT, FailureKind.OUT_OF_MEMORY})


class ProtocolViolation(Exception):
    """A child sent something outside the protocol; `kind` classifies it."""

    def __init__(self, reason: str, kind: FailureKind = FailureKind.SANDBOX_VIOLATION) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class ChildGone(Exception):
    """The child closed its end of the channel (it exited, or closed the descriptor)."""


# --- Field checks ------------------------------------------------------------------------------


def _int(low: int, high: int, optional: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if value is None:
            return optional
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return check


def _text(limit: int, optional: bool = False) -> Callable[[Any], bool]:
    return lambda value: (value is None and optional) or (isinstance(value, str) and len(value) <= limit)


def _number(optional: bool = False) -> Callable[[Any], bool]:
    return lambda value: (value is None and optional) or (
        isinstance(value, (int, float)) and not isinstance(value, bool))


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _dict(value: Any) -> bool:
    return isinstance(value, dict)


_FIELD_TYPES = frozenset({"int", "float", "bool", "str", "other"})


def _schema(value: Any) -> bool:
    """A hyper-parameter schema exactly as the describer builds it: the parent types `--hparam`
    strings with it, so every field must have the shape the parser reads."""
    if not isinstance(value, dict) or len(value) > 500:
        return False
    for name, field in value.items():
        if not (isinstance(name, str) and 0 < len(name) <= 100 and isinstance(field, dict)):
            return False
        if set(field) != {"type", "list", "optional", "default"} or field["type"] not in _FIELD_TYPES:
            return False
        if not (isinstance(field["list"], bool) and isinstance(field["optional"], bool)):
            return False
    return True  # defaults are shown, never parsed: any JSON value will do


def _kind(value: Any) -> bool:
    return isinstance(value, str) and value in {k.value for k in CHILD_KINDS}


_ANY_OPTIONAL_TEXT = _text(400, optional=True)

SCHEMAS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "environment": {"device_name": _ANY_OPTIONAL_TEXT, "torch_version": _ANY_OPTIONAL_TEXT,
                    "python_version": _ANY_OPTIONAL_TEXT, "platform": _ANY_OPTIONAL_TEXT,
                    "threads": _int(0, 4096, optional=True), "cuda_version": _ANY_OPTIONAL_TEXT,
                    "cudnn_version": _int(0, 10**7, optional=True), "numpy_version": _ANY_OPTIONAL_TEXT,
                    "pid_namespace_pid": _int(0, 2**31, optional=True)},
    "hparams": {"batch_size": _int(1, 100_000), "seq_len": _int(1, 100_000), "max_steps": _int(0, 2**40, True),
                "max_epochs": _int(0, 10**6, True), "values": _dict, "validate_every_epoch": _bool},
    "next": {"seq_len": _int(1, 100_000, optional=True), "loss": _number(optional=True)},
    "checkpoint_ready": {"seq": _int(0, 10**6)},
    "final_ready": {"seq": _int(0, 10**6)},
    "ready": {"eval_context": _int(0, 1024), "eval_window": _int(1, 64)},
    "loaded": {"seq": _int(0, 10**6)},
    "rows": {"id": _int(0, 2**40)},
    "described": {"path": _text(4096), "ok": _bool, "schema": lambda v: v is None or _schema(v),
                  "kind": lambda v: v is None or _kind(v), "reason": _text(4000, optional=True)},
    "failure": {"kind": lambda v: isinstance(v, str) and len(v) < 100, "reason": _text(4000),
                "traceback": _text(16_000, optional=True)},
}
OPTIONAL_FIELDS = {"described": {"schema", "kind", "reason"}, "environment": set(SCHEMAS["environment"]),
                   "hparams": {"validate_every_epoch"},
                   "failure": {"traceback"}, "next": {"seq_len", "loss"}}


OPTIONAL_DEFAULTS: dict[str, Any] = {"validate_every_epoch": False}


def validate(message: Any, expected: frozenset[str]) -> dict[str, Any]:
    """The message, if it is one of the `expected` types and matches its schema exactly."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolViolation(f"a frame that is not a message: {_show(message)}")
    kind = message["type"]
    if kind not in SCHEMAS:
        raise ProtocolViolation(f"an unknown message type {kind[:40]!r}")
    if kind not in expected and kind != "failure":
        raise ProtocolViolation(f"a {kind!r} message out of order (expected {' or '.join(sorted(expected))})")
    schema = SCHEMAS[kind]
    unknown = set(message) - set(schema) - {"type"}
    if unknown:
        raise ProtocolViolation(f"a {kind!r} message with unknown fields {sorted(unknown)[:5]}")
    optional = OPTIONAL_FIELDS.get(kind, set())
    for field, check in schema.items():
        if field not in message:
            if field in optional:
                continue
            raise ProtocolViolation(f"a {kind!r} message without its {field!r} field")
        if not check(message[field]):
            raise ProtocolViolation(f"a {kind!r} message whose {field!r} is {_show(message[field])}")
    # Every optional field is present afterwards (None where it was left out), so no reader can trip on one.
    message = {**{field: OPTIONAL_DEFAULTS.get(field) for field in optional}, **message}
    if kind == "described" and message["ok"] and message["schema"] is None:
        raise ProtocolViolation("a 'described' message that says ok without a schema")
    if kind == "next" and isinstance(message.get("loss"), float) and not math.isfinite(message["loss"]):
        message = {**message, "loss": None}  # the trainer reports non-finite losses as failures itself
    return message


def child_failure(message: dict[str, Any]) -> tuple[FailureKind, str, str | None]:
    """What a child's own failure report may mean: one of CHILD_KINDS, else a contract violation."""
    try:
        kind = FailureKind(message["kind"])
    except ValueError:
        kind = FailureKind.CONTRACT_VIOLATION
    if kind not in CHILD_KINDS:
        return (FailureKind.CONTRACT_VIOLATION,
                f"the run's process reported a failure of kind {message['kind'][:40]!r}, which a run cannot claim: "
                f"{message['reason'][:300]}", message.get("traceback"))
    return kind, message["reason"], message.get("traceback")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- Frames ------------------------------------------------------------------------------------


class Channel:
    """The supervisor's end of one child's socket: buffered, non-blocking reads, capped frames."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.sock.setblocking(False)
        self._buffer = bytearray()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any], payload: bytes = b"", timeout: float = SEND_TIMEOUT_SECONDS) -> None:
        """Blocking send with a time limit: a child that stops reading cannot hold the supervisor."""
        body = json.dumps(message).encode()
        self.sock.settimeout(max(0.1, min(timeout, SEND_TIMEOUT_SECONDS)))
        try:
            self.sock.sendall(HEADER.pack(len(body), len(payload)) + body + payload)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChildGone() from exc
        except OSError as exc:  # timeout included
            raise ProtocolViolation(f"the {self.name} stopped reading its channel ({exc})") from exc
        finally:
            self.sock.setblocking(False)

    def pump(self) -> None:
        """Read whatever has arrived (call when select says readable)."""
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    self.closed = True
                    return
                self._buffer += chunk
                if len(self._buffer) > HEADER.size + MAX_MESSAGE_BYTES:
                    self._check_header()
                    return
        except BlockingIOError:
            return
        except (ConnectionResetError, OSError):
            self.closed = True

    def frames(self) -> list[Any]:
        """Complete frames decoded from the buffer (JSON values, not yet validated)."""
        found = []
        while len(self._buffer) >= HEADER.size:
            size, payload = self._check_header()
            if len(self._buffer) < HEADER.size + size:
                break
            body = bytes(self._buffer[HEADER.size:HEADER.size + size])
            del self._buffer[:HEADER.size + size]
            try:
                found.append(json.loads(body))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise ProtocolViolation(f"the {self.name} sent a frame that is not JSON ({body[:60]!r})") from exc
        return found

    def _check_header(self) -> tuple[int, int]:
        size, payload = HEADER.unpack(bytes(self._buffer[:HEADER.size]))
        if payload:
            raise ProtocolViolation(f"the {self.name} sent a binary payload ({payload} bytes); children send none")
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolViolation(f"the {self.name} sent a message of {size} bytes, over the "
                                    f"{MAX_MESSAGE_BYTES} byte limit")
        return size, payload

    def close(self) -> None:
        self.sock.close()

"""Fuzzing the supervisor's side of the channel: thousands of random and malformed messages and
frames, as a hostile child would send them. Whatever arrives, only `ProtocolViolation` (the run
ends, classified) or `ChildGone` (the child left) may come out of frame parsing and validation;
a message that is accepted matches its schema, and what the supervisor does next with it (a
child's failure claim, a batch request) cannot raise either. Seeded, so a failure reproduces."""

from __future__ import annotations

import json
import math
import random
import socket
import struct
import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest

from harness.errors import FailureKind
from harness.feed import MAX_BATCH_TOKENS, TrainFeed
from harness.protocol import (
    CHILD_KINDS, HEADER, MAX_MESSAGE_BYTES, OPTIONAL_FIELDS, SCHEMAS, Channel, ChildGone, ProtocolViolation,
    child_failure, validate,
)

SEED = 20261130
TYPES = sorted(SCHEMAS)

# One well-formed message of each type: the starting points that mutations break.
VALID: dict[str, dict[str, Any]] = {
    "environment": {"type": "environment", "device_name": "x86_64", "torch_version": "2.13.0", "threads": 2,
                    "python_version": "3.11.7", "platform": "Linux", "cuda_version": None, "cudnn_version": None,
                    "numpy_version": "2.1", "pid_namespace_pid": 2},
    "hparams": {"type": "hparams", "batch_size": 20, "seq_len": 35, "max_steps": None, "max_epochs": 1,
                "values": {"lr": 0.001}},
    "next": {"type": "next", "seq_len": None, "loss": 5.2},
    "checkpoint_ready": {"type": "checkpoint_ready", "seq": 1},
    "final_ready": {"type": "final_ready", "seq": 2},
    "ready": {"type": "ready", "eval_context": 0, "eval_window": 64},
    "loaded": {"type": "loaded", "seq": 1},
    "rows": {"type": "rows", "id": 0},
    "described": {"type": "described", "path": "/entry/x.py", "ok": True, "schema": {}, "kind": None, "reason": None},
    "failure": {"type": "failure", "kind": "runtime_error", "reason": "setup raised", "traceback": "..."},
}

# Fields the supervisor reads with message[field] once a message is accepted (harness/execution.py).
READ_BY_SUPERVISOR = {"next": {"seq_len", "loss"}, "hparams": {"batch_size", "seq_len", "max_steps", "max_epochs", "values"},
                      "ready": {"eval_context", "eval_window"}, "rows": {"id"}, "checkpoint_ready": {"seq"},
                      "final_ready": {"seq"}, "loaded": {"seq"}, "failure": {"kind", "reason"}}

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**40 + 1, 2**63, -(2**63), 10**400, 1e308, -1e308, float("nan"),
    float("inf"), float("-inf"), 0.5, -0.0, "", "x" * 5000, "\x00\udcff", "ok", "interrupted", "harness_error",
    "timeout", [], [1, 2], {}, {"type": "rows"}, [[[[[]]]]], {"a": {"b": {"c": None}}},
]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value (NaN and infinities included, as Python's json writes them)."""
    choice = rng.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.choice([rng.randint(-10, 10), rng.randint(-2**70, 2**70), 10**rng.randint(0, 30)])
    if choice == 3:
        return rng.choice([rng.uniform(-1e6, 1e6), float("nan"), float("inf"), -float("inf"), 1e308])
    if choice == 4:
        return "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(0, 30)))
    if choice == 5:
        return rng.choice(ODD_VALUES)
    if choice == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if choice == 7:
        return {rng.choice(["type", "seq", "id", "kind", "reason", "x"]): random_json(rng, depth + 1)
                for _ in range(rng.randrange(0, 5))}
    return {"type": rng.choice(TYPES + ["phase", "need_test", "result", "curve", ""]),
            **{rng.choice(["seq", "id", "loss", "kind"]): random_json(rng, depth + 1) for _ in range(2)}}


def mutate(rng: random.Random, message: dict[str, Any]) -> dict[str, Any]:
    """A well-formed message broken one or a few ways: fields dropped, added, retyped, pushed to extremes."""
    broken = dict(message)
    for _ in range(rng.randint(1, 3)):
        fields = [k for k in broken if k != "type"]
        action = rng.randrange(6)
        if action == 0 and fields:
            del broken[rng.choice(fields)]
        elif action == 1:
            broken[rng.choice(["extra", "status", "valid_ppl", "checks", "phase"])] = random_json(rng)
        elif action == 2 and fields:
            broken[rng.choice(fields)] = rng.choice(ODD_VALUES)
        elif action == 3 and fields:
            broken[rng.choice(fields)] = random_json(rng)
        elif action == 4:
            broken["type"] = rng.choice(TYPES + ["phase", "need_test", "result", None, 7, ["rows"]])
        elif fields:
            broken[rng.choice(fields)] = str(broken[rng.choice(fields)])
    return broken


def messages(count: int) -> list[Any]:
    rng = random.Random(SEED)
    found: list[Any] = [dict(m) for m in VALID.values()]
    found += [{**VALID[t], k: v} for t in TYPES for k in SCHEMAS[t] for v in ODD_VALUES]  # every field x every odd value
    while len(found) < count:
        found.append(mutate(rng, rng.choice(list(VALID.values()))) if rng.random() < 0.6 else random_json(rng))
    return found


def schema_holds(message: dict[str, Any]) -> bool:
    """Independent restatement of what an accepted message must be: known type, known fields, each passing."""
    schema = SCHEMAS[message["type"]]
    if set(message) - set(schema) - {"type"}:
        return False
    optional = OPTIONAL_FIELDS.get(message["type"], set())
    return all((field in message and check(message[field])) or (field not in message and field in optional)
               for field, check in schema.items())


def handle(message: Any, expected: frozenset[str], feed: TrainFeed) -> str:
    """What the supervisor does with one decoded frame, as far as it depends on the message alone."""
    try:
        accepted = validate(message, expected)
    except ProtocolViolation as violation:
        assert violation.kind in (FailureKind.SANDBOX_VIOLATION, FailureKind.CONTRACT_VIOLATION)
        assert violation.reason and len(violation.reason) < 1000  # a reason that names the message, bounded
        return "violation"
    assert accepted["type"] in expected | {"failure"}, accepted
    assert schema_holds(accepted), accepted
    if accepted["type"] == "failure":
        kind, reason, _ = child_failure(accepted)
        assert kind in CHILD_KINDS or kind is FailureKind.CONTRACT_VIOLATION
        assert kind.status.value != "ok" and isinstance(reason, str)
        return "failure claim"
    missing = READ_BY_SUPERVISOR.get(accepted["type"], set()) - set(accepted)
    assert not missing, f"accepted {accepted!r} lacks {sorted(missing)}, which the supervisor reads: a KeyError"
    if accepted["type"] == "next":
        loss = accepted["loss"]
        assert loss is None or math.isfinite(loss)  # non-finite losses never reach the curve
        if feed.at_epoch_end():  # as the supervisor does before handing out a batch
            feed.end_epoch()
        batch = feed.next_batch(accepted["seq_len"])
        assert batch.inputs.size <= MAX_BATCH_TOKENS and batch.inputs.shape == batch.targets.shape
    return "accepted"


@pytest.fixture(scope="module")
def feed() -> TrainFeed:
    train = np.random.default_rng(0).integers(0, 100, 50_000).astype(np.int32)
    return TrainFeed(train, 0, 20, 35, None, None, None, 100, 0)


def test_validate_classifies_every_random_or_malformed_message(feed: TrainFeed) -> None:
    rng = random.Random(SEED + 1)
    corpus = messages(3000)
    outcomes: Counter[str] = Counter()
    for message in corpus:
        expected = frozenset(rng.sample(TYPES, rng.randint(1, 3)))
        outcomes[handle(message, expected, feed)] += 1
    assert len(corpus) >= 3000
    assert outcomes["violation"] > 1000 and outcomes["accepted"] > 0 and outcomes["failure claim"] > 0, outcomes


@pytest.mark.parametrize("claimed", ["ok", "interrupted", "timeout", "harness_error", "weights_modified", "causality_violation"])
def test_a_child_cannot_claim_what_ends_a_run_well_or_blames_the_harness(claimed: str) -> None:
    kind, reason, _ = child_failure(validate({"type": "failure", "kind": claimed, "reason": "r"}, frozenset()))
    assert kind is FailureKind.CONTRACT_VIOLATION
    if claimed in {k.value for k in FailureKind}:  # a real verdict, reserved to the supervisor
        assert "cannot claim" in reason


# --- Frames on a real socket pair ------------------------------------------------------------------


def frame(body: bytes, payload: int = 0) -> bytes:
    return HEADER.pack(len(body), payload) + body


def raw_frames(count: int) -> list[bytes]:
    """Byte streams a child could write: good frames of random values, and every way to break framing."""
    rng = random.Random(SEED + 2)
    streams = [
        b"", b"\x00", b"\x00" * 7, b"\xff" * 8, frame(b"{"), frame(b"\xff\xfe\x00"), frame(b"not json at all"),
        frame(b"[" * 100_000 + b"]" * 100_000),                    # nesting deep enough to overflow a parser
        frame(b"1" * 5000),                                         # an integer over Python's digit limit
        frame(b"NaN"), frame(b"-Infinity"), frame(b'{"type": "rows", "id": 1e999}'),
        frame(b'{"type": "rows", "id": 0}', payload=4) + b"\x00" * 4,  # children send no payload
        HEADER.pack(MAX_MESSAGE_BYTES + 1, 0),                      # a header announcing an oversize frame
        HEADER.pack(2**32 - 1, 2**32 - 1),
        frame(json.dumps(VALID["rows"]).encode())[:-3],             # a frame cut short
        frame(json.dumps(VALID["rows"]).encode()) * 50,             # many frames in one write
        frame(json.dumps({"type": "failure", "kind": "runtime_error", "reason": "r" * 3000}).encode()),
    ]
    while len(streams) < count:
        pieces = []
        for _ in range(rng.randint(1, 4)):
            value = random_json(rng) if rng.random() < 0.5 else mutate(rng, rng.choice(list(VALID.values())))
            body = json.dumps(value).encode()
            if rng.random() < 0.15:  # corrupt a byte of the body
                position = rng.randrange(len(body))
                body = body[:position] + bytes([rng.randrange(256)]) + body[position + 1:]
            pieces.append(frame(body, payload=rng.choice([0, 0, 0, 0, 1, 7])))
        stream = b"".join(pieces)
        if rng.random() < 0.1:
            stream = stream[:rng.randrange(len(stream) + 1)]  # the child dies mid-frame
        streams.append(stream)
    return streams


def parse(stream: bytes, close: bool, feed: TrainFeed) -> list[str]:
    """Write `stream` from the child's end of a socket pair and run the supervisor's side on it."""
    parent, child = socket.socketpair()
    channel = Channel(parent, "trainer")
    writer = threading.Thread(target=_write, args=(child, stream, close))
    writer.start()
    outcomes = []
    try:
        while True:
            channel.pump()
            for message in channel.frames():
                outcomes.append(handle(message, frozenset(TYPES), feed))
            if channel.closed or (not writer.is_alive() and not _readable(parent)):
                break
    except ProtocolViolation as violation:
        assert violation.kind is FailureKind.SANDBOX_VIOLATION and "the trainer sent" in violation.reason
        outcomes.append("violation")
    finally:
        channel.close()
        child.close()  # unblocks a writer stuck on a full socket after the parent stopped reading
        writer.join()
    outcomes.append("gone" if channel.closed else "open")
    return outcomes


def _write(sock: socket.socket, stream: bytes, close: bool) -> None:
    try:
        sock.sendall(stream)
        if close:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0.01)[0])


def test_channel_parses_every_random_or_malformed_byte_stream(feed: TrainFeed) -> None:
    streams = raw_frames(1200)
    outcomes: Counter[str] = Counter()
    for number, stream in enumerate(streams):
        for outcome in parse(stream, close=number % 2 == 0, feed=feed):
            outcomes[outcome] += 1
    assert len(streams) >= 1000
    assert outcomes["violation"] > 100 and outcomes["accepted"] > 10 and outcomes["gone"] > 100, outcomes


def test_an_oversize_frame_sent_in_full_is_refused_without_buffering_it(feed: TrainFeed) -> None:
    body = json.dumps({"type": "failure", "kind": "runtime_error", "reason": "x" * (3 * MAX_MESSAGE_BYTES)}).encode()
    assert parse(frame(body), close=True, feed=feed)[0] == "violation"


def test_sending_to_a_child_that_left_is_classified() -> None:
    parent, child = socket.socketpair()
    channel = Channel(parent, "scorer")
    child.close()
    with pytest.raises((ChildGone, ProtocolViolation)):
        for _ in range(100):  # the first sends may still land in the socket's buffer
            channel.send({"type": "log_probs", "id": 0}, b"\x00" * 65536)
    channel.close()


def test_the_header_layout_is_the_one_entries_forge() -> None:
    """The hostile corpus forges frames with struct '<II'; the channel must read exactly that."""
    assert HEADER.format in ("<II", b"<II") and struct.calcsize("<II") == HEADER.size == 8

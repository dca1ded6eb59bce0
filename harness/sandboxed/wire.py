"""Frames on the channel to the supervisor, as the sandboxed side writes and reads them.

A frame is an 8-byte header (JSON length, payload length; little-endian uint32), a JSON object
and an optional binary payload (token ids from the supervisor). This side never decides anything
from what it sends: the supervisor validates every frame against its own schema
(`harness.protocol`).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

HEADER = struct.Struct("<II")


class Wire:
    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)

    def send(self, message: dict[str, Any], payload: bytes = b"") -> None:
        body = json.dumps(message, default=str, allow_nan=True).encode()
        self.sock.sendall(HEADER.pack(len(body), len(payload)) + body + payload)

    def receive(self) -> tuple[dict[str, Any], bytes]:
        """The next frame; blocks. EOF (the supervisor is gone) ends this process."""
        size, payload_size = HEADER.unpack(self._exactly(HEADER.size))
        message = json.loads(self._exactly(size))
        return message, self._exactly(payload_size) if payload_size else b""

    def _exactly(self, count: int) -> bytes:
        chunks, left = [], count
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise SystemExit(0)  # the supervisor closed the channel: nothing left to do
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

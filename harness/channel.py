"""The message channel between the supervisor and a run's child process.

JSON lines over a Unix socket pair. JSON, not pickle: the child runs other people's code, and
unpickling what it sends would let it run code in the supervisor.
"""

from __future__ import annotations

import json
import select
import socket
from typing import Any

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class ChannelClosed(Exception):
    """The other side closed the channel (usually: the child exited)."""


class ProtocolError(Exception):
    """The other side sent something that is not a message of this protocol."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message, default=str).encode("utf-8") + b"\n")

    def receive(self, timeout: float | None) -> list[dict[str, Any]]:
        """Messages that arrive within `timeout` seconds (None: wait for at least one)."""
        while b"\n" not in self._buffer:
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if not readable:
                return []
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ChannelClosed()
            self._buffer += chunk
            if len(self._buffer) > MAX_MESSAGE_BYTES and b"\n" not in self._buffer:
                raise ProtocolError(f"a message over {MAX_MESSAGE_BYTES} bytes")
        *lines, self._buffer = self._buffer.split(b"\n")
        return [self._decode(line) for line in lines if line.strip()]

    @staticmethod
    def _decode(line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(f"not JSON: {line[:80]!r}") from exc
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError(f"not a message: {line[:80]!r}")
        return message

    def close(self) -> None:
        self.sock.close()

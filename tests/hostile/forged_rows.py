"""From the scorer: answers request 1 before request 0 (its slot still holds stale rows)."""

import json
import os
import socket
import stat
import struct

from tests.hostile._base import Uniform


def channel():
    """The harness's socket, found among this process's open descriptors."""
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                return socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
    raise RuntimeError("no socket among the open descriptors")


def forge(message):
    """One frame as the harness writes them: <II header (JSON length, payload length), then JSON."""
    body = json.dumps(message).encode()
    with channel() as sock:
        sock.sendall(struct.pack("<II", len(body), 0) + body)


class AnswersAhead(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        self.forged = ctx.role != "scorer"

    def log_probs(self, inputs, state):
        if not self.forged:
            self.forged = True
            forge({"type": "rows", "id": 1})
        return super().log_probs(inputs, state)

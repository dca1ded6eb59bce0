"""Stops the clock the old way: a forged `phase` message, then 12 s of "untimed" training."""

import json
import os
import socket
import stat
import struct
import time

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


class ForgesPhase(Uniform):
    def train_step(self, inputs, targets):
        forge({"type": "phase", "phase": "eval"})
        time.sleep(12)  # three budgets, if the clock believed the message
        return 1.0

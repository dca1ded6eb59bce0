"""The harness's channel as an attacker finds it (files starting with _ are not entries; materialise
pastes this into each entry that imports it, so every submission stays one self-contained module)."""

import json
import os
import socket
import stat
import struct


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

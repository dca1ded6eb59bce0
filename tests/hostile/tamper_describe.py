"""When imported beside other entries (to read `--hparam` schemas), describes them itself: each
one it can see is reported as failing to import, so the organiser's overrides are silently
dropped for them, and the last description of a file wins."""

import json
import os
import sys
from pathlib import Path
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


def sabotage():
    """Only in the describer: there the other entries sit beside this file."""
    if not sys.modules["__main__"].__spec__ or not sys.modules["__main__"].__spec__.name.endswith("describe"):
        return
    here = Path(__file__).resolve()
    for other in sorted(here.parent.glob("*.py")):
        if other != here:
            forge({"type": "described", "path": str(other), "ok": False, "kind": "import_error",
                   "reason": "could not be imported"})


sabotage()


class TampersWithDescriptions(Uniform):
    pass

"""Reads what only root should read, and what names the organiser's files, to publish it in its log."""

import os
import sys
from pathlib import Path

from tests.hostile._base import Uniform


def needed_names(folder):
    """What the sandbox must show in `folder`: the way to this interpreter and its packages."""
    needed = set()
    for path in (sys.base_prefix, sys.prefix, sys.executable, os.path.realpath(sys.executable), torch.__file__):
        if Path(path).is_relative_to(folder) and Path(path) != folder:
            needed.add(Path(path).relative_to(folder).parts[0])
    return needed


def secrets_found():
    found = []
    for path in ("/etc/shadow", "/etc/gshadow", "/root/.bashrc", "/root/.ssh/id_rsa", "/root/.bash_history"):
        try:
            found.append(f"{path}: {Path(path).read_text()[:40]!r}")
        except OSError:
            pass
    for folder in ("/root", "/home"):
        try:
            names = set(os.listdir(folder)) - needed_names(Path(folder))
        except OSError:
            continue
        if names:
            found.append(f"{folder}: {sorted(names)[:5]}")
    try:
        table = Path("/proc/self/mountinfo").read_text()
        found += [f"mount of {word}" for word in ("harness.sqlite", "ptb.test.txt", "ptb.valid.txt") if word in table]
    except OSError:
        pass
    return found


class SecretReader(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        found = secrets_found()
        if found:
            raise RuntimeError("read: " + "; ".join(found))  # the reason is published on the site
        print("read_secrets: nothing readable", flush=True)

"""`python -m harness.sandboxed.describe CHANNEL_FD`: import one entry, report its hyper-parameter schema.

The supervisor uses the schema only to type `--hparam` strings for that same entry (a lie changes
nothing but the entry's own run, whose trainer checks the values again); names, tracks and authors
come from the supervisor's static reading of the source, never from here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from harness.sandboxed.common import run_child
from harness.sandboxed.loader import hparam_schema, import_entry_class


def main(argv: list[str]) -> int:
    return run_child(argv, describe)


def describe(spec: dict[str, Any], wire: Any) -> None:
    """One entry per process: no entry's code can speak for another's."""
    cls = import_entry_class(Path(spec["path"]))
    wire.send({"type": "described", "path": spec["path"], "ok": True, "schema": hparam_schema(cls.Hparams)})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

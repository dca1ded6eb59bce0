"""`python -I -m harness.sandboxed.describe CHANNEL_FD`: import entries, report their hyper-parameter schema.

The supervisor uses the schema only to type `--hparam` strings for that same entry (a lie changes
nothing but the entry's own run, whose trainer checks the values again); names, tracks and authors
come from the supervisor's static reading of the source, never from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.sandboxed.common import Failure, die_with_parent
from harness.sandboxed.loader import hparam_schema, import_entry_class
from harness.sandboxed.wire import Wire


def main(argv: list[str]) -> int:
    die_with_parent()
    wire = Wire(int(argv[0]))
    spec, _ = wire.receive()
    for raw_path in spec["paths"]:
        try:
            cls = import_entry_class(Path(raw_path))
            wire.send({"type": "described", "path": raw_path, "ok": True, "schema": hparam_schema(cls.Hparams)})
        except Failure as failure:
            wire.send({"type": "described", "path": raw_path, "ok": False, "kind": failure.kind,
                       "reason": failure.reason[:4000]})
    wire.send({"type": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

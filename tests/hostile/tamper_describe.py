"""In the process that reads its `--hparam` schema, speaks before the harness's own code does: a
forged description of itself whose schema lists none of its real fields, so that typing the
organiser's overrides fails, hoping the whole command stops with it (it must fail alone)."""

import sys
from pathlib import Path

from tests.hostile._channel import forge
from tests.hostile._base import Uniform


def sabotage():
    """Only in the describer."""
    main = sys.modules["__main__"]
    if not main.__spec__ or not main.__spec__.name.endswith("describe"):
        return
    fake = {"type": "str", "list": False, "optional": False, "default": "x"}
    forge({"type": "described", "path": str(Path(__file__)), "ok": True, "schema": {"nothing_real": fake}})
    print("tamper_describe: forged my own description", flush=True)


sabotage()


class TampersWithDescriptions(Uniform):
    pass

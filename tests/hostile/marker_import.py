"""Its import leaves a marker file wherever it can: /tmp, /dev/shm, the home directory, its own
folder, the working directory and every folder above its file (the project, the repository)."""

import os
from pathlib import Path

from tests.hostile._base import Uniform

MARKER = "ptb-hostile-marker"


def places():
    yield Path("/tmp")
    yield Path("/dev/shm")
    yield Path.home()
    yield Path(os.path.expanduser("~root"))
    yield Path.cwd()
    yield from Path(__file__).resolve().parents


written, refused = [], 0
for folder in places():
    try:
        (folder / MARKER).write_text(f"written by {os.getuid()} at import\n")
        written.append(str(folder))
    except OSError:
        refused += 1
print(f"{MARKER}: written in {written}, refused in {refused} folders", flush=True)


class Marker(Uniform):
    pass

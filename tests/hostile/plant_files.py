"""At import, plants a .pth file in every site-packages on sys.path and a module in the harness's
package and its repository: payloads that every later Python process of the environment would run."""

import site
import sys
from pathlib import Path

import harness

from tests.hostile._base import Uniform

PAYLOAD = "# ptb-hostile: planted by an entry; a real attack would put `import os; ...` here\n"


def targets():
    folders = {Path(p) for p in sys.path if p.endswith("site-packages")}
    folders.update(Path(p) for p in site.getsitepackages())
    for folder in sorted(folders):
        yield folder / "ptb_hostile_planted.pth"
    yield Path(harness.__file__).parent / "ptb_hostile_planted.py"
    yield Path(harness.__file__).parent.parent / "ptb_hostile_planted.py"  # the repository (editable install)


planted = []
for target in targets():
    try:
        target.write_text(PAYLOAD)
        planted.append(str(target))
    except OSError:
        continue
if planted:
    raise RuntimeError(f"planted {', '.join(planted)}")


class Planter(Uniform):
    pass

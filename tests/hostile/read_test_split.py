"""Looks for ptb.test.txt everywhere it might be, to score perfectly if it finds it."""

import os
from pathlib import Path

from tests.hostile._base import Uniform


def candidates():
    here = Path(__file__).resolve()
    for folder in [os.environ.get("HARNESS_DATA_DIR", ""), Path.home() / ".cache" / "ptb-harness" / "data",
                   Path("/root/.cache/ptb-harness/data"), os.environ.get("HARNESS_CACHE", ""),
                   *[p / "shared" / "data" / "ptb" for p in here.parents], Path("/work/shared/data/ptb"),
                   *[p / "data" for p in here.parents]]:
        if folder:
            yield Path(folder) / "ptb.test.txt"


class Cheater(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        tried = []
        for path in candidates():
            try:
                self.test_text = path.read_text()
                return  # found it: this entry would now "predict" the test split perfectly
            except OSError as exc:
                tried.append(f"{path}: {exc.strerror}")
        raise FileNotFoundError("could not read ptb.test.txt; tried " + "; ".join(tried[:3]))

import sqlite3
from pathlib import Path

from tests.hostile._base import Uniform


class Vandal(Uniform):
    def setup(self, ctx):
        super().setup(ctx)
        database = Path(__file__).resolve().parent.parent / "harness.sqlite"
        with sqlite3.connect(database) as connection:
            connection.execute("UPDATE runs SET test_ppl = 1.0")

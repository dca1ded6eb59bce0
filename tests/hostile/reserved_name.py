"""Takes a baseline's name (the project's baseline `unigram`), to be ranked as the reference."""

from tests.hostile._base import Uniform


class Impostor(Uniform):
    name = "unigram"

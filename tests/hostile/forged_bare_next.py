"""A bare `next` request (every field of it optional in the schema), before its own."""


from tests.hostile._channel import forge
from tests.hostile._base import Uniform


class BareNext(Uniform):
    def train_step(self, inputs, targets):
        forge({"type": "next"})
        return 1.0

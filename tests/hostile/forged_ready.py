"""Claims checkpoints nobody asked for: a forged `checkpoint_ready`, then `final_ready`, mid-training."""


from tests.hostile._channel import forge
from tests.hostile._base import Uniform


class ClaimsReady(Uniform):
    def train_step(self, inputs, targets):
        forge({"type": "checkpoint_ready", "seq": 1})
        forge({"type": "final_ready", "seq": 2})  # "training is over": skip to scoring
        return 1.0

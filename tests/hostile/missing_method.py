from harness.contract import Entry


class NoScoring(Entry):
    def setup(self, ctx):
        pass

    def train_step(self, inputs, targets):
        return 1.0

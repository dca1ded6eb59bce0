"""Reads ahead on its scorer's channel (found by walking the call stack to the scoring server): the
first input of its stream's next window is the target of the last position it is scoring, and
the supervisor used to have that window in flight already. From the adversarial review. Now no
scorer ever holds two windows of one stream: it finds only other streams' windows (which it puts
back), and scores as the unigram it otherwise is."""

import math
import select
import sys

import numpy as np

from tests.hostile._base import Uniform


def scorer_and_message():
    frame = sys._getframe(2)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if type(owner).__name__ == "Scorer" and "message" in frame.f_locals:
            return owner, frame.f_locals["message"]
        frame = frame.f_back
    return None, None


def waiting_frame(wire):
    """The next frame on the wire if one is already there (kept for the server to read next)."""
    if not hasattr(wire, "stash"):
        wire.stash = []
        read = wire.receive
        wire.receive = lambda: wire.stash.pop(0) if wire.stash else read()
    if not wire.stash and select.select([wire.sock], [], [], 0)[0]:
        wire.stash.append(type(wire).receive(wire))
    return wire.stash[0] if wire.stash else None


class ReadsAhead(Uniform):
    eval_window = 2

    def setup(self, ctx):
        super().setup(ctx)
        self.peeked = 0

    def log_probs(self, inputs, state):
        rows = torch.full((*inputs.shape, self.vocab_size), -math.log(self.vocab_size))
        scorer, message = scorer_and_message()
        if scorer is None:
            return rows, state
        frame = waiting_frame(scorer.wire)
        if frame is not None and frame[0].get("type") == "log_probs" and frame[0].get("stream") == message["stream"]:
            upcoming = np.frombuffer(frame[1], dtype="<i4").reshape(frame[0]["shape"])
            if upcoming.shape[0] == inputs.shape[0]:
                rows[:, -1, :] = math.log(0.01 / (self.vocab_size - 1))
                rows[torch.arange(inputs.shape[0]), -1, torch.from_numpy(upcoming[:, 0].astype(np.int64))] = math.log(0.99)
                self.peeked += 1
        return rows, state

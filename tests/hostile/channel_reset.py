"""Shuts the harness's channel down in both directions mid-training."""

import socket

from tests.hostile._channel import channel
from tests.hostile._base import Uniform


class ResetsChannel(Uniform):
    def train_step(self, inputs, targets):
        with channel() as sock:
            sock.shutdown(socket.SHUT_RDWR)
        return 1.0

"""Claims a failure no run may claim (`interrupted`), hoping to be run again and again."""

import time

from tests.hostile._channel import forge
from tests.hostile._base import Uniform


class ClaimsInterrupted(Uniform):
    def train_step(self, inputs, targets):
        forge({"type": "failure", "kind": "interrupted", "reason": "interrupted by the organiser (Ctrl-C)"})
        time.sleep(30)  # never reaches the harness's own failure report
        return 1.0

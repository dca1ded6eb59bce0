"""Its state_dict holds objects a checkpoint cannot carry (a function, a lock), to be pickled."""

import threading

from tests.hostile._base import Uniform


class Unpicklable(Uniform):
    def state_dict(self):
        return {"weights": self.weights, "restore": open, "lock": threading.Lock()}

    def load_state_dict(self, state):
        self.weights = state["weights"]

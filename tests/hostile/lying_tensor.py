"""Returns a torch.Tensor subclass that lies about itself: it claims the (B, L, V) float shape the
scorer expects while it holds one int64 column per position."""

from tests.hostile._base import Uniform


class Liar(torch.Tensor):
    claimed = None

    @property
    def shape(self):
        return self.claimed if self.claimed is not None else torch.Tensor.shape.__get__(self)

    def size(self, dim=None):
        shape = self.shape
        return shape if dim is None else shape[dim]

    def is_floating_point(self):
        return True

    @property
    def dtype(self):
        return torch.float32


class LiesAboutItself(Uniform):
    def log_probs(self, inputs, state):
        small = torch.zeros(*inputs.shape, 1, dtype=torch.int64).as_subclass(Liar)
        small.claimed = torch.Size((*inputs.shape, self.vocab_size))
        return small, state

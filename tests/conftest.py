"""Suite-wide settings: one intra-op thread per test process (the suite runs under pytest-xdist
with one worker per core; more threads only fight over the cores)."""

import torch

torch.set_num_threads(1)

import torch

# one thread per test process: pytest -n 2 already uses both cores, and small tensor ops
# slow down badly when intra-op threads compete for them
torch.set_num_threads(1)

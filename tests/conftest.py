import torch

# one thread per test process: pytest -n 2 already uses both cores, and small tensor ops
# slow down badly when intra-op threads compete for them
torch.set_num_threads(1)

import pytest  # noqa: E402

#: Devices the device-parametrised tests run on: the CPU always, CUDA when this machine has it.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """A test taking ``device`` runs once per entry of DEVICES (CUDA ones skipped without a GPU)."""
    return request.param

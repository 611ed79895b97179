import pathlib

import pytest
import torch

torch.set_num_threads(1)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_dir():
    """../shared beside the checkout (tests may read it; the package must not)."""
    if not SHARED.exists():
        pytest.skip("../shared is not present")
    return SHARED

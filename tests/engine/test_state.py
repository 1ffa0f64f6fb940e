"""What a checkpoint keeps of the host generators comes back exactly, through a weights-only load."""

import random

import numpy as np
import torch

from convnext.engine.state import host_rng_state, set_host_rng_state


def test_host_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    np.random.seed(3)
    random.seed(3)
    torch.save(host_rng_state(), tmp_path / "rng.pt")
    expected = (np.random.rand(), random.random())
    set_host_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (np.random.rand(), random.random()) == expected

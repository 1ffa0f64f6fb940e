import pytest
import torch

from convnext import UserError, create_model, list_models
from convnext.complexity import model_info
from convnext.models import build_model

EXPECTED_PARAMS = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "convnext_xlarge": 350_196_968,
}


def meta(name, **kw):
    with torch.device("meta"):
        return build_model(name, **kw)


@pytest.mark.parametrize("name,params", EXPECTED_PARAMS.items())
def test_paper_parameter_counts(name, params):
    assert sum(p.numel() for p in meta(name).parameters()) == params

import pytest
import torch

from convnext.augment import BatchAugment, soft_targets

NONE = dict(randaug_n=0, reprob=0.0, mixup=0.0, cutmix=0.0)


def test_soft_targets_smooth_by_hand():
    t = soft_targets(torch.tensor([2, 0]), 4, smoothing=0.1)
    assert torch.allclose(t[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(t.sum(1), torch.ones(2))


def test_full_recipe_shapes_and_target_rows():
    torch.manual_seed(0)
    aug = BatchAugment(10, (0.5,) * 3, (0.25,) * 3)  # the paper's in1k settings
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    for _ in range(4):  # both Mixup and CutMix turns
        x, t = aug(images, torch.arange(8))
        assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert t.shape == (8, 10) and torch.allclose(t.sum(1), torch.ones(8))
        assert (t >= 0.01 - 1e-6).all()  # smoothing 0.1 over 10 classes leaves 0.01 everywhere


def test_without_random_steps_it_only_normalises():
    aug = BatchAugment(3, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), smoothing=0.0, **NONE)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x, t = aug(images, torch.tensor([1, 2]))
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), 0.2
    assert torch.allclose(x, (images / 255 - mean) / std, atol=1e-6)
    assert torch.equal(t, torch.tensor([[0.0, 1, 0], [0, 0, 1]]))


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_weigh_labels_by_their_share_of_the_pixels(kind):
    """Image of class k is the constant k/10: a mixed image's mean is then the target-weighted label."""
    torch.manual_seed(1)
    settings = dict(NONE, mixup=0.8 if kind == "mixup" else 0.0, cutmix=1.0 if kind == "cutmix" else 0.0)
    aug = BatchAugment(8, (0.0,) * 3, (1.0,) * 3, smoothing=0.0, **settings)
    labels = torch.arange(8)
    images = (labels.view(8, 1, 1, 1) * 25.5).round().to(torch.uint8).expand(8, 3, 32, 32).contiguous()
    x, t = aug(images, labels)
    value_of_class = (torch.arange(8) * 25.5).round() / 255
    assert torch.allclose(x.mean((1, 2, 3)), t @ value_of_class, atol=1e-4)
    assert (t.max(1).values < 1).any()  # something was actually mixed

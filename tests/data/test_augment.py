import random

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.data.augment import (
    BatchMix,
    randaugment_spec,
    seeded,
    soft_targets,
    train_transform,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)


def photo(size=48, seed=0):
    """A smooth colour image (RandAugment's operations change such an image visibly)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    pixels = np.stack([x, y, (x + y) / 2], -1) * 200 + rng.integers(0, 40, (size, size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def test_soft_targets_smooth_by_hand():
    t = soft_targets(torch.tensor([2, 0]), 4, smoothing=0.1)
    assert torch.allclose(t[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(t.sum(1), torch.ones(2))


def test_randaugment_spec_is_the_official_string():
    assert randaugment_spec(2, 9, 0.5) == "rand-m9-n2-mstd0.5-inc1"
    assert randaugment_spec(0, 9, 0.5) is None and randaugment_spec(2, 0, 0.5) is None


def test_without_random_steps_it_only_resizes_and_normalises():
    t = train_transform(16, MEAN, STD, scale=(1, 1), ratio=(1, 1), hflip=0.0, randaug_n=0, color_jitter=0.0,
                        reprob=0.0)
    img = photo(16)
    expected = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
                - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(t(img), expected, atol=1e-5)


def test_randaugment_and_erasing_draw_per_image():
    """The paper's per-image RandAugment: within one batch, images get different operations. Two identical
    inputs, each seeded differently (as two batch positions are), must come out differently; with the same
    seed they must come out identical (workers and ranks agree)."""
    t = train_transform(48, MEAN, STD, scale=(1, 1), ratio=(1, 1), hflip=0.0, reprob=0.0)
    img = photo()
    outs = []
    for index in range(8):
        with seeded(0, 0, index):
            outs.append(t(img))
    distinct = {tuple(o.flatten()[::97].tolist()) for o in outs}
    assert len(distinct) >= 5  # each operation fires with p=0.5, so a few images may come out unchanged
    with seeded(0, 0, 3):
        again = t(img)
    assert torch.equal(again, outs[3])


def test_erasing_fills_with_noise_not_a_constant():
    t = train_transform(48, MEAN, STD, scale=(1, 1), ratio=(1, 1), hflip=0.0, randaug_n=0, color_jitter=0.0,
                        reprob=1.0)
    plain = train_transform(48, MEAN, STD, scale=(1, 1), ratio=(1, 1), hflip=0.0, randaug_n=0,
                            color_jitter=0.0, reprob=0.0)
    img = photo()
    with seeded(1):
        erased = t(img)
    changed = (erased != plain(img)).any(0)
    assert changed.float().mean() > 0.02
    assert erased[0][changed].std() > 0.5  # per-pixel normal noise, not a constant fill


def test_seeded_restores_the_global_generators():
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    with seeded(9, 9):
        random.random(), np.random.rand(), torch.rand(1)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected




def test_no_mixing_leaves_images_and_smooths_labels():
    mix = BatchMix(3, mixup=0.0, cutmix=0.0, smoothing=0.0)
    x = torch.randn(2, 3, 8, 8)
    y, t = mix(x.clone(), torch.tensor([1, 2]))
    assert torch.equal(y, x) and torch.equal(t, torch.tensor([[0.0, 1, 0], [0, 0, 1]]))


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_weigh_labels_by_their_share_of_the_pixels(kind):
    """Image of class k is the constant k: a mixed image's mean is then the target-weighted label."""
    np.random.seed(1)
    mix = BatchMix(8, mixup=0.8 if kind == "mixup" else 0.0, cutmix=1.0 if kind == "cutmix" else 0.0,
                   smoothing=0.0)
    labels = torch.arange(8)
    mixed = 0
    for _ in range(4):
        x = labels.view(8, 1, 1, 1).float().expand(8, 3, 32, 32).contiguous()
        y, t = mix(x, labels)
        assert torch.allclose(y.mean((1, 2, 3)), t @ torch.arange(8).float(), atol=1e-4)
        assert torch.allclose(t.sum(1), torch.ones(8))
        mixed += int((t.max(1).values < 1).any())
    assert mixed >= 2  # something was actually mixed

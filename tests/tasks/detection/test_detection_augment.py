"""The official 3x recipe's DETR-style augmentation (`CropPolicy`): flips, crops and resizes that keep boxes,
masks and labels together, sizes the recipe allows, seeded draws, images left without a box, and the
settings that choose it (the demo and runs of earlier versions unchanged)."""

import json

import numpy as np
import pytest
import torch

from convnext.engine.checkpoints import check_resumable
from convnext.engine.config import config_changes, keep_run_settings
from convnext.errors import UserError
from convnext.models import build_model
from convnext.tasks.detection.config import MULTI_SCALE, resolve_detect_config
from convnext.tasks.detection.data import CocoData, CropPolicy, DetectionItems, crop_window, hflip, resize_keep_ratio
from convnext.tasks.detection.demo import make_demo_set
from convnext.tasks.detection.train import train_detector

TINY = dict(dims=[8, 8, 16, 16], depths=[1, 1, 1, 1], fpn_channels=8, head_width=16, rois_per_image=16,
            proposals=50)


def _target(height: int, width: int, boxes: list[list[int]]) -> dict:
    """Boxes with labels 1, 2, ... and masks that fill each box exactly."""
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        mask[y0:y1, x0:x1] = 1
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.arange(1, len(boxes) + 1), masks=masks, image_id=7)


def _mask_box(mask: torch.Tensor) -> list[int]:
    """The box a mask fills (x0, y0, x1, y1)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    return make_demo_set(tmp_path_factory.mktemp("aug") / "train", "train", 6, size=64, seed=3)


def test_the_flip_moves_pixels_boxes_and_masks_together():
    image = torch.zeros(3, 20, 50)
    image[:, 2:8, 3:10] = 1.0
    target = _target(20, 50, [[3, 2, 10, 8]])
    flipped, out = hflip(image, target)
    assert out["boxes"].tolist() == [[40.0, 2.0, 47.0, 8.0]]
    assert _mask_box(out["masks"][0]) == [40, 2, 47, 8]
    assert flipped[0, 2:8, 40:47].eq(1).all() and flipped.sum() == image.sum()
    assert out["labels"].tolist() == [1] and out["image_id"] == 7


def test_the_crop_clips_boxes_and_drops_those_outside_with_their_masks_and_labels():
    target = _target(100, 100, [[10, 10, 30, 30], [50, 50, 90, 90], [70, 0, 95, 20]])
    image, out = crop_window(torch.rand(3, 100, 100), target, top=5, left=5, height=55, width=60)
    assert image.shape == (3, 55, 60)
    # inside: moved; across the edge: clipped to the window; outside (x from 70, window to 65): dropped
    assert out["boxes"].tolist() == [[5.0, 5.0, 25.0, 25.0], [45.0, 45.0, 60.0, 55.0]]
    assert out["labels"].tolist() == [1, 2] and out["masks"].shape == (2, 55, 60)
    assert [_mask_box(m) for m in out["masks"]] == [[5, 5, 25, 25], [45, 45, 60, 55]]


def test_an_image_left_without_boxes_survives_and_trains():
    image, out = crop_window(torch.rand(3, 64, 64), _target(64, 64, [[2, 2, 10, 10]]), 30, 30, 34, 34)
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,) and out["masks"].shape == (0, 34, 34)
    torch.manual_seed(0)
    model = build_model("maskrcnn_convnext_tiny", num_classes=3, min_size=(64,), max_size=128, **TINY).train()
    losses = model([image], [out])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_box_reg"] == 0  # background only


def test_sizes_are_the_recipes():
    policy = CropPolicy(chance=1.0)
    model = build_model("maskrcnn_convnext_tiny", num_classes=3, min_size=MULTI_SCALE, max_size=1333, **TINY).train()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        height, width = int(rng.integers(200, 900)), int(rng.integers(200, 2000))
        image, target = torch.rand(3, height, width), _target(height, width, [[1, 1, 150, 150]])
        resized, _ = resize_keep_ratio(image, target, 500, 1333)
        assert (min(resized.shape[1:]) == 500 or max(resized.shape[1:]) == 1333) and max(resized.shape[1:]) <= 1333
        cropped, out = policy(image, target, np.random.default_rng(seed))
        assert out["masks"].shape[1:] == cropped.shape[1:] and max(cropped.shape[1:]) <= 600
        if max(height, width) / min(height, width) < 1333 / 600:  # no side of the resized image under 384
            assert min(cropped.shape[1:]) >= 384
        # the last step, the detector's own multi-scale resize (torchvision floors the scaled sides: +-1 px)
        sides = model.transform([cropped], [out])[0].image_sizes[0]
        assert min(abs(min(sides) - s) for s in MULTI_SCALE) <= 1 and max(sides) <= 1333
    # a side the resize leaves under the crop's least: the crop takes all of it (1000 x 100 -> 1333 x 133)
    cropped, _ = policy(torch.rand(3, 100, 1000), _target(100, 1000, [[1, 1, 50, 50]]), np.random.default_rng(0))
    assert cropped.shape[1] == 133 and 384 <= cropped.shape[2] <= 600


def test_sizes_scale_with_the_runs_training_sizes():
    assert CropPolicy.for_sizes(MULTI_SCALE, 1333) == CropPolicy()
    small = CropPolicy.for_sizes((128, 256), 512)  # 256 / 800 of the recipe's
    assert (small.sizes, small.crop, small.max_size) == ((128, 160, 192), (123, 192), 512)


def test_the_pipeline_is_seeded(demo_set):
    items = DetectionItems(CocoData(demo_set, train=True), train=True, seed=5, policy=CropPolicy.for_sizes((64,), 128))
    first = [items[(i, 1)] for i in range(len(items))]
    again = [items[(i, 1)] for i in range(len(items))]
    other = [items[(i, 2)] for i in range(len(items))]
    for (a, ta, _), (b, tb, _) in zip(first, again, strict=True):
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["masks"], tb["masks"])
    assert any(a.shape != b.shape or not torch.equal(a, b) for (a, _, _), (b, _, _) in zip(first, other, strict=True))
    assert any(a.shape[1:] != (64, 64) for a, _, _ in first)  # some were cropped


def test_without_a_policy_the_draws_are_those_of_earlier_versions(demo_set):
    source = CocoData(demo_set, train=True)
    items = DetectionItems(source, train=True, seed=0)
    flips = 0
    for index in range(len(source)):
        image, target, _ = items[(index, 3)]
        flip = np.random.default_rng((0, 3, index)).random() < 0.5  # the draw earlier versions made
        original = source.load(index)[1]
        expected = hflip(image, target)[1]["boxes"] if flip else target["boxes"]
        assert image.shape[1:] == (64, 64) and torch.equal(expected, original["boxes"])
        flips += flip
    assert 0 < flips < len(source)


def test_the_setting_and_its_recipes():
    assert resolve_detect_config("coco_3x").augment == "detr"
    assert resolve_detect_config("coco_1x").augment == "multiscale"
    assert resolve_detect_config("demo").augment == "multiscale"
    with pytest.raises(UserError, match=r"^setting augment='mosaic': choose from multiscale, detr$"):
        resolve_detect_config("coco_3x", ["augment=mosaic"])


def test_a_coco_3x_run_of_an_earlier_version_resumes_as_it_started(tmp_path):
    saved = resolve_detect_config("coco_3x").to_dict()
    del saved["augment"]  # what a run of an earlier version stored
    assert config_changes(saved, resolve_detect_config("coco_3x")) == ["augment 'multiscale' -> 'detr'"]
    rerun = resolve_detect_config("coco_3x")  # the same command again: the run goes on as it started
    assert keep_run_settings(saved, rerun) == [
        'augment="multiscale": kept as when this run started (it predates the setting)']
    assert rerun.augment == "multiscale" and config_changes(saved, rerun) == []
    check_resumable(dict(config=saved, classes=["a"]), tmp_path / "last.pt", rerun, ["a"])
    asked = resolve_detect_config("coco_3x", ["augment=detr"])  # given by the user: a change, refused in one line
    assert keep_run_settings(saved, asked) == [] and asked.augment == "detr"
    with pytest.raises(UserError, match=r"augment 'multiscale' -> 'detr'.*rerun with the settings") as err:
        check_resumable(dict(config=saved, classes=["a"]), tmp_path / "last.pt", asked, ["a"])
    assert "\n" not in str(err.value)


def test_a_detr_run_trains_and_says_so(demo_set, tmp_path):
    config = resolve_detect_config("demo", model_args=TINY, data=str(demo_set), output=str(tmp_path / "run"),
                                   epochs=1, lr_steps=(), warmup_iters=1, batch_size=2, min_sizes=(64,),
                                   test_size=64, max_size=128, augment="detr")
    lines = []
    train_detector(config, log=lines.append)
    said = [line for line in lines if "augmentation:" in line]
    assert said and "shorter side 32/40/48 (longer <= 128), then a crop 31-48 px" in said[0]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])

"""Segmentation data, transforms, metrics and sliding-window inference."""

import numpy as np
import pytest
import torch
from PIL import Image

from convnext import UserError
from convnext.tasks.segmentation.data import (
    IGNORE,
    SegmentationSet,
    TrainTransform,
    problem,
    read_pair,
    rescaled_size,
    segmentation_folder,
)
from convnext.tasks.segmentation.inference import segment, slide_logits
from convnext.tasks.segmentation.metrics import ConfusionMatrix
from convnext.weights import IMAGENET_MEAN, IMAGENET_STD


def _write(folder, name, size=(40, 30), labels=(0, 1, 2), mask_size=None, image_dir="images", mask_dir="masks"):
    rng = np.random.default_rng(len(name))
    (folder / image_dir).mkdir(parents=True, exist_ok=True)
    (folder / mask_dir).mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / image_dir / f"{name}.jpg")
    w, h = mask_size or size
    mask = np.array(labels, dtype=np.uint8)[rng.integers(0, len(labels), (h, w))]
    Image.fromarray(mask).save(folder / mask_dir / f"{name}.png")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_ade20k_tree_reduces_the_zero_label(tmp_path):
    for split in ("training", "validation"):
        _write(tmp_path, f"ADE_{split}_1", labels=(0, 1, 150), image_dir=f"images/{split}",
               mask_dir=f"annotations/{split}")
    source = segmentation_folder(tmp_path, "val")
    assert source.layout == "ade20k" and source.reduce_zero_label
    raw = np.asarray(Image.open(source.pairs[0][1]))
    _, labels = read_pair(source, 0, 150)
    assert (labels[raw == 0] == IGNORE).all() and (labels[raw == 1] == 0).all() and (labels[raw == 150] == 149).all()


def test_bad_samples_are_named_in_one_line(tmp_path):
    _write(tmp_path / "ok", "a")
    _write(tmp_path / "ok", "b", mask_size=(20, 30))  # mask of another size
    _write(tmp_path / "ok", "c", labels=(0, 7))  # a label past num_classes=3
    (tmp_path / "ok" / "images" / "d.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "ok" / "masks" / "d.png")
    source = segmentation_folder(tmp_path / "ok", "train")
    assert problem(source, 0, 3) is None
    assert "image is 40x30 but its mask b.png is 20x30" in problem(source, 1, 3)
    assert "label 7 in c.png is outside 0..2" in problem(source, 2, 3)
    assert "cannot read" in problem(source, 3, 3)
    assert all("\n" not in problem(source, i, 3) for i in (1, 2, 3))
    Image.new("RGB", (40, 30)).save(tmp_path / "ok" / "masks" / "a.png")
    assert "a.png is a RGB image; masks must be single-channel" in problem(source, 0, 3)
    _write(tmp_path / "lacking", "a")
    (tmp_path / "lacking" / "images" / "e.jpg").write_bytes((tmp_path / "ok" / "images" / "a.jpg").read_bytes())
    with pytest.raises(UserError, match="1 of 2 images .* have no mask .* e.jpg"):
        segmentation_folder(tmp_path / "lacking", "train")


def test_training_samples_are_cropped_padded_and_unusable_ones_flagged(tmp_path):
    _write(tmp_path, "a", size=(40, 30))
    _write(tmp_path, "b", labels=(0, 9))
    source = segmentation_folder(tmp_path, "train")
    transform = TrainTransform(48, (64, 32), (0.5, 2.0), IMAGENET_MEAN, IMAGENET_STD)
    dataset = SegmentationSet(source, 3, transform, seed=1)
    draws = [d for d in range(6) if dataset.index_of(d) == 0]
    image, mask, bad = dataset[draws[0]]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48) and bad == -1
    assert set(mask.unique().tolist()) <= {0, 1, 2, IGNORE} and (mask == IGNORE).any()  # padded
    again = dataset[draws[0]]
    assert torch.equal(again[0], image) and torch.equal(again[1], mask)  # a draw is reproducible
    bad_draw = next(d for d in range(6) if dataset.index_of(d) == 1)
    _, mask, bad = dataset[bad_draw]
    assert bad == 1 and (mask == IGNORE).all()


def test_rescale_fits_the_official_box():
    assert rescaled_size(512, 683, (2048, 512)) == (512, 683)
    assert rescaled_size(300, 3000, (2048, 512)) == (205, 2048)
    assert rescaled_size(100, 100, (2048, 512), 0.5) == (256, 256)


def test_confusion_matrix_scores_by_hand():
    m = ConfusionMatrix(3)
    target = torch.tensor([0, 0, 1, 1, IGNORE])
    prediction = torch.tensor([0, 1, 1, 1, 2])
    m.update(prediction, target)
    scores = m.scores()
    assert scores["iou"] == [50.0, pytest.approx(66.6667, abs=1e-3), None]  # class 2: nowhere, left out
    assert scores["miou"] == pytest.approx((50 + 200 / 3) / 2)
    assert scores["aacc"] == 75.0 and scores["macc"] == 75.0 and scores["pixels"] == 4


def test_scores_are_undefined_not_zero_when_every_pixel_is_ignored():
    from convnext.cli.segment import _score_line

    m = ConfusionMatrix(3)
    m.update(torch.tensor([0, 1]), torch.tensor([IGNORE, IGNORE]))
    scores = m.scores()
    assert scores["miou"] is None and scores["macc"] is None and scores["aacc"] is None and scores["pixels"] == 0
    line = _score_line("val", scores)
    assert "mIoU undefined" in line and "every mask pixel is ignored" in line


def test_two_images_of_one_name_are_refused_not_dropped(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "0.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "0.png")
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "0.png")
    with pytest.raises(UserError, match="0.jpg and 0.png share the name 0"):
        segmentation_folder(tmp_path, "val")


def test_sliding_windows_equal_one_pass_for_a_pointwise_model():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)
    image = torch.randn(1, 3, 50, 70)
    slid = slide_logits(model, image, crop=32, stride=21, num_classes=4)
    with torch.no_grad():
        assert torch.allclose(slid, model(image), atol=1e-5)
    probs = segment(model, image[0], num_classes=4, scale=(70, 50), crop=32, stride=21,
                    ratios=(0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (4, 50, 70) and torch.allclose(probs.sum(0), torch.ones(50, 70), atol=1e-5)


def test_demo_scenes_have_exact_masks_from_disjoint_photo_parts(tmp_path):
    from convnext.tasks.segmentation.demo import CLASSES, majority_miou, make_demo_scenes

    make_demo_scenes(tmp_path, train=3, val=2)
    train = segmentation_folder(tmp_path, "train")
    val = segmentation_folder(tmp_path, "val")
    assert len(train) == 3 and len(val) == 2
    masks = [read_pair(val, i, len(CLASSES))[1] for i in range(2)]
    assert all(m.shape == (128, 128) and m.max() < len(CLASSES) for m in masks)
    assert majority_miou([np.array([[0, 0, 1]])], 6) == pytest.approx(100 * (2 / 3) / 2)


def test_a_decompression_bomb_is_an_unreadable_image_not_a_crash(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from convnext.tasks.segmentation.data import Unreadable

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "bomb.png")
    Image.new("L", (16, 16)).save(tmp_path / "masks" / "bomb.png")
    source = segmentation_folder(tmp_path, "val")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # 256 pixels: over twice the limit, as a bomb is
    with pytest.raises(Unreadable, match="bomb.png: cannot read .*decompression bomb"):
        read_pair(source, 0, 3)

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.data.augment import train_transform
from convnext.data.images import (
    Digits,
    EpochSampler,
    EvalImages,
    ImageFolder,
    TrainImages,
    image_folders,
)
from convnext.errors import UserError
from convnext.weights import IMAGENET_MEAN, IMAGENET_STD, data_config


def make_folder(root, classes=("cat", "dog"), per_class=3, size=(20, 16)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_image_folder_labels_follow_sorted_class_names(tmp_path):
    folder = ImageFolder(make_folder(tmp_path, classes=("zebra", "ant")))
    assert folder.classes == ["ant", "zebra"]
    assert len(folder) == 6
    img, label = folder.load(5)
    assert label == 1 and img.mode == "RGB" and img.size == (20, 16)
    assert "zebra" in folder.describe(5)


@pytest.mark.parametrize("problem", ["missing", "no_classes", "empty_class"])
def test_image_folder_problems_are_one_clear_error(tmp_path, problem):
    root = tmp_path / "data"
    if problem == "no_classes":
        root.mkdir()
    elif problem == "empty_class":
        make_folder(root)
        (root / "empty").mkdir()
    with pytest.raises(UserError, match={"missing": "not found", "no_classes": "no class sub-folders",
                                         "empty_class": "empty has no images"}[problem]):
        ImageFolder(root)


def test_train_and_val_found_under_one_folder(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "val", per_class=1)
    train, val = image_folders(tmp_path)
    assert (len(train), len(val)) == (6, 2)
    make_folder(tmp_path / "other", classes=("cat", "cow"))
    with pytest.raises(UserError, match=r"differ from the training classes: extra \[cow\], missing \[dog\]"):
        image_folders(tmp_path, tmp_path / "other")


def test_long_name_lists_say_they_are_cut():
    from convnext.errors import some

    assert some([str(i) for i in range(7)]) == "0, 1, 2, 3, 4, ... (7 in all)"
    assert some(["a"]) == "a" and some([]) == "none"


def test_digits_fixed_stratified_split():
    train, val = Digits("train"), Digits("val")
    assert (len(train), len(val)) == (1438, 359)
    assert not set(train.indices) & set(val.indices)
    counts = np.bincount(val.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # 20% of 174..183 images per class
    img, label = val.load(0)
    assert img.size == (8, 8) and img.mode == "RGB" and 0 <= label <= 9
    assert np.asarray(img).max() <= 255 and train.images.max() == 255  # 16 "on" pixels -> white
    assert np.array_equal(Digits("val").indices, val.indices)


def test_train_images_are_seeded_by_epoch_and_index_and_skip_unreadable(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cat" / "9_broken.png").write_bytes(b"not an image")
    folder = ImageFolder(tmp_path)
    broken = next(i for i in range(len(folder)) if "broken" in folder.describe(i))
    data = TrainImages(folder, train_transform(16, IMAGENET_MEAN, IMAGENET_STD), seed=3)
    x, label, bad = data[(0, 1)]
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16) and bad == -1
    assert torch.equal(x, data[(0, 1)][0])
    assert not torch.equal(x, data[(0, 2)][0])
    x, label, bad = data[(broken, 0)]
    assert bad == broken and label == folder.samples[(broken + 1) % len(folder)][1]


def test_eval_images_mark_unreadable_with_label_minus_one(tmp_path):
    make_folder(tmp_path, per_class=1)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    folder = ImageFolder(tmp_path)
    data = EvalImages(folder, data_config(32))
    x, label, bad = data[2]
    assert label == -1 and bad == 2 and x.shape == (3, 32, 32)
    x, label, bad = data[0]
    assert label == 0 and bad == -1 and x.dtype == torch.float32


def test_epoch_sampler_shards_one_shuffle_and_resumes_inside_an_epoch():
    data = list(range(10))
    single = EpochSampler(data, seed=5)
    single.set_epoch(2)
    order = [i for i, epoch in single]
    assert sorted(order) == data and all(epoch == 2 for _, epoch in single)
    ranks = [EpochSampler(data, world_size=2, rank=r, seed=5) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(2)
    assert [i for i, _ in ranks[0]] == order[0::2] and [i for i, _ in ranks[1]] == order[1::2]
    single.set_epoch(2, start=4)
    assert [i for i, _ in single] == order[4:] and len(single) == 6
    single.set_epoch(3)
    assert [i for i, _ in single] != order


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_image_folders_skip_hidden_files_and_name_broken_links(tmp_path):
    for name in ("a/1.png", "a/sub/2.png", "b/1.png", "a/.thumb.png", "a/.cache/3.png"):
        _png(tmp_path / name)
    os.symlink("loop.png", tmp_path / "a" / "loop.png")
    os.symlink("..", tmp_path / "a" / "sub" / "up")
    with pytest.warns(UserWarning, match=r"left out 2 image names .*not readable files.*loop.png"):
        folder = ImageFolder(tmp_path)
    assert [Path(p).relative_to(tmp_path).as_posix() for p, _ in folder.samples] == ["a/1.png", "a/sub/2.png",
                                                                                     "b/1.png"]


def test_an_unreadable_class_folder_is_not_called_empty(tmp_path, monkeypatch):
    for name in ("a/1.png", "b/1.png"):
        _png(tmp_path / name)
    real_walk = os.walk

    def refusing_walk(top, onerror=None, **kw):
        if Path(top).name == "b":  # what os.walk meets in a folder without read permission (root ignores chmod)
            onerror(PermissionError(13, "Permission denied", str(top)))
            return iter(())
        return real_walk(top, onerror=onerror, **kw)

    monkeypatch.setattr(os, "walk", refusing_walk)
    with pytest.raises(UserError, match=f"cannot read the folder {tmp_path / 'b'}: Permission denied"):
        ImageFolder(tmp_path)


def test_deep_grey_images_keep_their_brightness(tmp_path):
    """Attacker trial: 32-bit float TIFFs (mode F, 0-1) were read as black; 16-bit ones scale by 65535."""
    from convnext.data.images import load_image

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, mode="F").save(tmp_path / "f01.tif")
    Image.fromarray(ramp * 255, mode="F").save(tmp_path / "f255.tif")
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "i16.png")
    for name in ("f01.tif", "f255.tif", "i16.png"):
        pixels = np.asarray(load_image(tmp_path / name))
        assert pixels.shape == (8, 8, 3) and pixels.min() == 0 and pixels.max() == 255, name
    Image.fromarray(ramp * 1000 - 5, mode="F").save(tmp_path / "wide.tif")
    with pytest.raises(UserError, match="float pixels outside 0-1 and 0-255"):
        load_image(tmp_path / "wide.tif")

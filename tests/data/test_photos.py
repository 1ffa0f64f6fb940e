"""Training on real photographs with nothing but the everyday flags: the run must learn."""

import numpy as np
from PIL import Image

from convnext.data.photos import PHOTOS, make_photo_crops
from convnext.tasks.classification.config import resolve_config
from convnext.tasks.classification.train import train


def test_photo_crops_layout_and_determinism(tmp_path):
    a = make_photo_crops(tmp_path / "a", train_per_class=3, val_per_class=2, seed=1)
    b = make_photo_crops(tmp_path / "b", train_per_class=3, val_per_class=2, seed=1)
    for split, count in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (a / split).iterdir()) == sorted(PHOTOS)
        files = sorted((a / split).rglob("*.jpg"))
        assert len(files) == 6 * count
        img = Image.open(files[0])
        assert img.mode == "RGB" and min(img.size) >= 20
    first = sorted((a / "val").rglob("*.jpg"))[0]
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(b / first.relative_to(a))))


def test_a_fitted_run_learns_real_photos(tmp_path):
    data = make_photo_crops(tmp_path / "photos", train_per_class=16, val_per_class=8)
    # what `convnext train --data DIR --model convnext_atto --epochs 8 --res 32 --batch-size 16` resolves to,
    # on a slimmer atto so the test stays quick
    config = resolve_config("in1k", ["fit_to_run=true", 'model_args={"dims": [16, 32, 64, 128]}'],
                            model="convnext_atto", data=str(data), epochs=8, res=32, batch_size=16, workers=0,
                            output=str(tmp_path / "run"))
    logs = []
    summary = train(config, log=logs.append)
    assert any(line.startswith("fitted to this run: lr ") for line in logs)
    assert summary["best_top1"] >= 50  # chance is 16.7%
    assert (tmp_path / "run" / "augment.png").stat().st_size > 10_000


def test_the_module_command_refuses_a_non_empty_folder(tmp_path, capsys):
    from convnext.data.photos import main

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main([str(tmp_path / "full")]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convnext.cli import main
from convnext.data.images import Digits, EvalImages
from convnext.errors import UserError
from convnext.tasks.classification.config import resolve_config
from convnext.tasks.classification.train import train
from convnext.tasks.loading import load_model
from convnext.tasks.robustness import (
    ALEXNET_ERRORS,
    COMMON,
    EXTRA,
    CorruptedImages,
    corrupt_image,
    corruption_errors,
    evaluate_robustness,
    mean_ce,
    mean_error,
    runner,
)
from convnext.tasks.robustness.metrics import error_by_severity
from convnext.tasks.robustness.suites import corruption_tree, imagenet_synsets, subset_indices, subset_synsets

TINY = 'model_args={"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}'


# --- metrics, by hand ---------------------------------------------------------------------------------------

def test_ce_and_mce_by_hand():
    # Every corruption at half AlexNet's error, except gaussian noise at 10..50%:
    # CE_gauss = (10+20+30+40+50) / (5 * 88.6428) = 150 / 443.214 = 0.338437...
    errors = {name: [50 * ALEXNET_ERRORS[name]] * 5 for name in COMMON}
    errors["gaussian_noise"] = [10, 20, 30, 40, 50]
    ce = corruption_errors(errors)
    assert ce["gaussian_noise"] == pytest.approx(150 / 443.214)
    assert ce["fog"] == pytest.approx(0.5)
    assert mean_ce(ce) == pytest.approx(100 * (150 / 443.214 + 14 * 0.5) / 15)  # 48.9229...
    assert mean_ce(ce) == pytest.approx(48.92292, abs=1e-4)


def test_mce_needs_all_fifteen_and_all_severities():
    ce = corruption_errors({"fog": [10, 20, 30, 40, 50]})
    assert ce["fog"] == pytest.approx(150 / (5 * 81.9324))
    assert mean_ce(ce) is None
    with pytest.raises(UserError, match="all 5 severities"):
        corruption_errors({"fog": [10, 20]})


def test_relative_ce_unnormalised_mean_and_severity_curve_by_hand():
    model = {"fog": [10, 20, 30, 40, 50], "contrast": [5, 5, 5, 5, 5]}
    baseline = {"fog": [20, 20, 40, 40, 80], "contrast": [25, 25, 25, 25, 25]}
    ce = corruption_errors(model, baseline)
    assert ce == {"fog": pytest.approx(150 / 200), "contrast": pytest.approx(25 / 125)}
    assert mean_error(model) == pytest.approx(175 / 10)
    assert error_by_severity(model) == pytest.approx([7.5, 12.5, 17.5, 22.5, 27.5])
    with pytest.raises(UserError, match="baseline lacks"):
        corruption_errors(model, {"fog": [1, 2, 3, 4, 5]})


def test_alexnet_reference_covers_the_nineteen_corruptions():
    assert set(ALEXNET_ERRORS) == set(COMMON + EXTRA) and len(COMMON) == 15
    assert ALEXNET_ERRORS["gaussian_noise"] == 0.886428 and ALEXNET_ERRORS["jpeg_compression"] == 0.6065


# --- corruptions ----------------------------------------------------------------------------------------------

def picture(size=32):
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // size, y * 255 // size, (x * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "speckle_noise", "elastic_transform",
          "snow", "spatter"}


@pytest.mark.parametrize("name", COMMON + EXTRA)
def test_corruptions_are_deterministic_per_image_and_seed(name):
    img = picture()
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    a = np.asarray(corrupt_image(img, name, 3, seed=7, key="cls/a.png"))
    assert np.random.random() == expected_next  # the caller's global NumPy state is left as it was
    b = np.asarray(corrupt_image(img, name, 3, seed=7, key="cls/a.png"))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(img))
    if name in RANDOM:  # another image key or seed draws other noise
        assert not np.array_equal(a, np.asarray(corrupt_image(img, name, 3, seed=8, key="cls/a.png")))
        assert not np.array_equal(a, np.asarray(corrupt_image(img, name, 3, seed=7, key="cls/b.png")))


def test_corruption_input_checks():
    with pytest.raises(UserError, match="unknown corruption"):
        corrupt_image(picture(), "rain", 1)
    with pytest.raises(UserError, match="severity"):
        corrupt_image(picture(), "fog", 6)
    with pytest.raises(UserError, match="at least 32"):
        corrupt_image(picture(16), "fog", 1)


def test_corrupted_dataset_matches_eval_preprocessing_and_repeats():
    config = dict(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bicubic", mean=(0.5, 0.4, 0.3),
                  std=(0.2, 0.25, 0.3))
    source = Digits("val")
    clean = CorruptedImages(source, config)
    assert torch.equal(clean[5][0], EvalImages(source, config)[5][0])
    first = CorruptedImages(source, config, "shot_noise", 4, seed=1)[5][0]
    again = CorruptedImages(source, config, "shot_noise", 4, seed=1)[5][0]  # a new run, same pixels
    assert torch.equal(first, again) and not torch.equal(first, clean[5][0])


# --- suites ---------------------------------------------------------------------------------------------------

def test_a_and_r_subsets_match_timms_index_lists():
    info = Path(__import__("timm").__file__).parent / "data" / "_info"
    for suite in ("a", "r"):
        expected = [int(x) for x in (info / f"imagenet_{suite}_indices.txt").read_text().split()]
        assert subset_indices(suite) == expected and len(expected) == 200
        assert subset_synsets(suite) == sorted(subset_synsets(suite))
    assert len(imagenet_synsets()) == 1000


def save_images(folder, count=2, size=32, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_tree_reader_finds_category_folders_and_names_what_is_missing(tmp_path):
    for severity in range(1, 6):
        save_images(tmp_path / "noise" / "gaussian_noise" / str(severity) / "0", 1)
    for value in ("0.80", "1.60"):
        save_images(tmp_path / "cbar" / "blue_noise_sample" / value / "0", 1)
    found = corruption_tree(tmp_path, "c", ["gaussian_noise"], [1, 2, 3, 4, 5])
    assert found["gaussian_noise", 3] == tmp_path / "noise" / "gaussian_noise" / "3"
    assert corruption_tree(tmp_path / "cbar", "cbar", ["blue_noise_sample"], [1, 2])["blue_noise_sample", 2].name \
        == "1.60"
    with pytest.raises(UserError, match="missing 1 corruption folder: contrast"):
        corruption_tree(tmp_path, "c", ["gaussian_noise", "contrast"], [1])
    with pytest.raises(UserError, match="blue_noise_sample/2.40"):
        corruption_tree(tmp_path / "cbar", "cbar", ["blue_noise_sample"], [1, 2, 3])


class Logits(nn.Module):
    """A 1000-class 'model' that ranks class 0 (tench, not an ImageNet-A class) first and the A class
    ``favourite`` second, whatever the image."""

    def __init__(self, favourite: int):
        super().__init__()
        self.num_classes, self.favourite = 1000, favourite
        self.pretrained_cfg = dict(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bicubic",
                                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(len(x), 1000)
        logits[:, 0], logits[:, self.favourite] = 2.0, 1.0
        return logits


def test_imagenet_a_restricts_the_logits_to_its_200_classes(tmp_path):
    first, second = subset_synsets("a")[:2]
    save_images(tmp_path / "a" / first, 3)
    save_images(tmp_path / "a" / second, 3, seed=1)
    model = Logits(subset_indices("a")[0])
    report = evaluate_robustness(model, {"a": tmp_path / "a", "sketch": tmp_path / "a"}, output=tmp_path / "out")
    assert report["summary"]["model"]["a"]["top1"] == pytest.approx(50.0)  # right on `first`, wrong on `second`
    assert report["summary"]["model"]["sketch"]["top1"] == 0.0  # all 1000 classes: tench wins


# --- the demo model: error rises with severity; resuming; the command and its errors ------------------------

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A small ConvNeXt trained briefly on the digits, as `convnext train` writes it."""
    root = tmp_path_factory.mktemp("robust")
    config = resolve_config("demo", [TINY, "epochs=3"], output=str(root / "run"))
    train(config, log=lambda text: None)
    return root / "run" / "last.pt"


def test_error_rises_with_severity_and_reruns_resume(digits_run, tmp_path, monkeypatch):
    model = load_model(checkpoint=digits_run)
    names = ["gaussian_noise", "contrast"]
    report = evaluate_robustness(model, {"c": None}, output=tmp_path, corruptions=names, severities=(1, 3, 5),
                                  batch_size=128)
    entry = report["summary"]["model"]["c"]
    curve = entry["error_by_severity"]
    assert all(b > a for a, b in zip(curve, curve[1:], strict=False)), curve
    assert entry["clean_error"] < curve[0] < curve[-1] and entry["images"] == 359
    assert "mce" not in entry  # digits are not ImageNet: no AlexNet normalisation
    # an interrupted run: one corruption's file lost; only its jobs run again, with the same numbers
    (tmp_path / "model" / "c" / "contrast.json").unlink()
    calls = []
    real = runner._score_group
    monkeypatch.setattr(runner, "_score_group", lambda *a, **k: calls.append(a[1].corruption) or real(*a, **k))
    again = evaluate_robustness(model, {"c": None}, output=tmp_path, corruptions=names, severities=(1, 3, 5),
                                  batch_size=128)
    assert calls == ["contrast"] * 3
    assert again["summary"] == report["summary"]


def cli(args, capsys):
    code = main(["robustness", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_command_json_plot_and_baseline(digits_run, tmp_path, capsys):
    args = ["--checkpoint", digits_run, "--baseline", digits_run, "--suite", "c,clean", "--corruptions", "fog",
            "--severities", "1,5", "--output", tmp_path, "--plot", tmp_path / "plot.png", "--json"]
    code, out, err = cli(args, capsys)
    assert code == 0, err
    report = json.loads(out)
    c = report["summary"]["model"]["c"]
    assert c["severities"] == [1, 5] and c["relative_ce"] == {"fog": pytest.approx(1.0)}
    assert c["relative_mce"] == pytest.approx(100.0)  # the same weights as their own baseline
    assert report["summary"]["model"]["clean"]["top1"] == pytest.approx(100 - c["clean_error"])
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert json.loads((tmp_path / "robustness.json").read_text()) == report
    code, out, _ = cli(args[:-1], capsys)  # the table, from stored results
    assert code == 0 and "C relCE" in out and "100.0" in out


def test_bad_input_is_one_line_and_exit_2(digits_run, tmp_path, capsys):
    save_images(tmp_path / "tree" / "gaussian_noise" / "1" / "0", 1)
    save_images(tmp_path / "letters" / "a", 1)
    save_images(tmp_path / "imagenet_a" / subset_synsets("a")[0], 1)
    cases = [
        (["--suite", "c", "--data", tmp_path / "tree", "--corruptions", "gaussian_noise,contrast"],
         "missing 5 corruption folders: gaussian_noise/2"),
        (["--suite", "c", "--data", tmp_path / "letters"], "do not match the model's classes: a"),
        (["--suite", "a", "--data", tmp_path / "imagenet_a"], "needs a model with the 1000 ImageNet-1K classes"),
        (["--suite", "c", "--corruptions", "rain"], "unknown corruption rain"),
        (["--suite", "clean", "--plot", tmp_path / "p.png"], "--plot applies to the corruption suites"),
        (["--suite", "clean", "--corruptions", "fog", "--severities", "2"],
         "--corruptions and --severities apply to the corruption suites: it needs suite c or cbar"),
        (["--suite", "c", "--plot", tmp_path], "name a .png, .pdf or .svg file"),
        (["--suite", "clean", "--seed", "-1"], "--seed must be from 0 to 2**32 - 1, got -1"),
    ]
    for args, message in cases:
        code, _, err = cli(["--checkpoint", digits_run, "--output", tmp_path / "out", *args], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_imagenet_summary_gives_mce_and_other_weights_are_not_mixed_up(tmp_path):
    from convnext.tasks.robustness import summarise

    errors = {name: [50 * ALEXNET_ERRORS[name]] * 5 for name in COMMON}
    errors["gaussian_noise"] = [10, 20, 30, 40, 50]
    scores = {f"c/{name}/{s + 1}": dict(error=e, top1=100 - e, count=4) for name, v in errors.items()
              for s, e in enumerate(v)}
    summary = summarise({"model": scores}, imagenet_suites={"c"})["model"]["c"]
    assert summary["mce"] == pytest.approx(48.92292, abs=1e-4)
    assert "mce" not in summarise({"model": scores})["model"]["c"]  # not ImageNet: no AlexNet normalisation
    # results stored for one model are not reused for another one under the same label
    first, second = Logits(subset_indices("a")[0]), Logits(subset_indices("a")[1])
    second.dummy.data.fill_(1.0)
    save_images(tmp_path / "a" / subset_synsets("a")[0], 2)
    assert evaluate_robustness(first, {"a": tmp_path / "a"}, output=tmp_path / "o")["summary"]["model"]["a"][
        "top1"] == 100.0
    assert evaluate_robustness(second, {"a": tmp_path / "a"}, output=tmp_path / "o")["summary"]["model"]["a"][
        "top1"] == 0.0


def test_a_pre_generated_tree_is_scored_with_classes_matched_by_name(digits_run, tmp_path):
    digits = Digits("val")
    for severity in range(1, 6):
        for digit in (3, 7):  # two of the ten classes: labels must follow folder names, not positions
            folder = tmp_path / "tree" / "gaussian_noise" / str(severity) / str(digit)
            folder.mkdir(parents=True)
            for i in np.flatnonzero(digits.labels == digit)[:5]:
                digits.load(int(i))[0].save(folder / f"{i}.png")
    model = load_model(checkpoint=digits_run)
    report = evaluate_robustness(model, {"c": tmp_path / "tree"}, output=tmp_path / "out",
                                 corruptions=["gaussian_noise"])
    entry = report["summary"]["model"]["c"]
    assert entry["images"] == 10 and entry["severities"] == [1, 2, 3, 4, 5] and "clean_error" not in entry
    assert max(entry["errors"]["gaussian_noise"]) <= 30  # clean digits saved in the tree: mostly right


def test_unreadable_images_left_out_are_said_in_the_report():
    from convnext.tasks.robustness.report import format_table, summarise

    score = dict(top1=50.0, error=50.0, count=33, skipped=2)
    results = {"ours": {"a/clean/clean": score, "c/gaussian_noise/1": score, "c/gaussian_noise/2": score}}
    text = format_table(summarise(results))
    assert "ours, ImageNet-A: 2 unreadable image(s) left out of the scores" in text
    assert "(33 images each, 2 unreadable left out)" in text
    del score["skipped"]  # scores stored by earlier versions did not count them
    assert "unreadable" not in format_table(summarise(results))

import json

import pytest
import torch

import convnext.deploy.quantize as quantize
from convnext import UserError, create_model
from convnext.cli import main
from convnext.data.images import export_digits
from convnext.deploy.export import export_safetensors
from convnext.files import temp_path
from convnext.tasks.loading import load_model
from convnext.weights import data_config

RES = 32
# INT8 logits may stray from float32 by this share of the float logits' largest magnitude
TOLERANCE = 0.1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A float model with a non-trivial head (so INT8 errors would show in its logits), saved as safetensors
    with its preprocessing, and folders of real digit scans to calibrate and validate on."""
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10).eval()
    with torch.no_grad():
        model.head.weight.mul_(20)
    model.pretrained_cfg = dict(data_config(RES), crop_pct=1.0)
    model.model_name = "convnext_atto"
    ckpt = export_safetensors(model, root / "float.safetensors")
    digits = export_digits(root / "digits")
    calibrate, val = digits / "train", digits / "val"
    out = root / "atto-int8.xml"
    args = ["quantize", "--model", "convnext_atto", "--checkpoint", str(ckpt), "--calibrate", str(calibrate),
            "--samples", "40", "--val", str(val), "--out", str(out), "--json"]
    return dict(model=model, ckpt=ckpt, calibrate=calibrate, val=val, out=out, args=args, root=root)


def test_quantize_cli_end_to_end(setup, capsys, dead_pid):
    killed = temp_path(setup["out"].with_name("atto-int8.ir"), dead_pid)  # a kill -9 left its staging folder
    killed.mkdir()
    (killed / "model.bin").write_bytes(b"partial weights")
    assert main(setup["args"]) == 0
    report = json.loads(capsys.readouterr().out)
    calibration = report["calibration"]
    assert calibration["count"] == 40
    assert calibration["max_logit_diff"] <= TOLERANCE * calibration["max_abs_logit"]
    assert calibration["top1_agreement"] >= 90
    assert report["val"]["float32"]["count"] == report["val"]["int8"]["count"] == 359
    assert report["val"]["drop"] == pytest.approx(report["val"]["float32"]["top1"] - report["val"]["int8"]["top1"])
    assert setup["out"].is_file() and setup["out"].with_suffix(".bin").is_file()
    assert sorted(p.name for p in setup["root"].iterdir()) == ["atto-int8.bin", "atto-int8.xml", "digits",
                                                               "float.safetensors"]  # no temporary left
    xml = setup["out"].read_text()
    assert str(setup["root"]) not in xml and "<convnext>" in xml  # metadata inside, no machine paths


def test_int8_file_reloads_and_runs_like_the_float_model(setup):
    if not setup["out"].exists():
        assert main(setup["args"]) == 0
    int8 = load_model(checkpoint=setup["out"])
    assert isinstance(int8, quantize.QuantizedModel) and int8.model_name == "convnext_atto"
    assert int8.num_classes == 10 and int8.pretrained_cfg["input_size"] == [3, RES, RES]
    x = torch.randn(5, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref, out = setup["model"](x), int8(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max() <= TOLERANCE * ref.abs().max()
    with pytest.raises(UserError, match="holds an INT8 convnext_atto, not convnext_tiny"):
        load_model("convnext_tiny", checkpoint=setup["out"])


def test_predict_runs_the_int8_file(setup, capsys):
    if not setup["out"].exists():
        assert main(setup["args"]) == 0
        capsys.readouterr()
    assert main(["predict", "--checkpoint", str(setup["out"]), str(setup["val"] / "3"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["model"] == "convnext_atto" and results["dtype"] == "int8"  # not the fp32 default
    assert len(results["results"]) == len(list((setup["val"] / "3").iterdir()))  # every held-out 3
    assert all(len(r["predictions"]) == 5 for r in results["results"])
    _one_line_error(capsys, ["predict", "--checkpoint", str(setup["out"]), str(setup["val"] / "3"), "--dtype", "bf16"],
                    "an INT8 model runs in its own precision: leave out --dtype")


def _one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1, err


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    base = ["quantize", "--checkpoint", str(setup["ckpt"]), "--out", str(tmp_path / "q.xml")]
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, [*base, "--model", "convnext_atto", "--calibrate", str(empty)], "no image files in")
    _one_line_error(capsys, [*base, "--model", "convnext_tiny", "--calibrate", str(setup["calibrate"])],
                    "error:")  # the file holds another model's weights
    _one_line_error(capsys, [*base, "--model", "convnext_atto", "--calibrate", str(setup["calibrate"]),
                             "--backend", "tensorrt"], "unsupported quantization backend 'tensorrt'")
    _one_line_error(capsys, ["quantize", "--model", "convnext_atto", "--checkpoint", str(setup["ckpt"]),
                             "--calibrate", str(setup["calibrate"]), "--out", str(tmp_path / "q.onnx")],
                    "--out must be FILE.xml")
    _one_line_error(capsys, [*base, "--model", "convnext_atto", "--calibrate", str(setup["calibrate"]),
                             "--samples", "0"], "--samples must be at least 1")
    assert not list(tmp_path.glob("q*"))
    with pytest.raises(UserError, match="not an OpenVINO model"):
        (tmp_path / "junk.xml").write_text("not xml")
        (tmp_path / "junk.bin").write_bytes(b"")
        quantize.load_quantized(tmp_path / "junk.xml")


def test_benchmark_times_the_int8_file(setup, capsys, monkeypatch):
    if not setup["out"].exists():
        assert main(setup["args"]) == 0
    import convnext.deploy.benchmark as benchmark

    monkeypatch.setattr(benchmark, "ROUND_SECONDS", 0.01)
    args = ["benchmark", "--model", "convnext_atto", "--res", str(RES), "--batch", "4", "--rounds", "1",
            "--peers", "none", "--dtype", "int8", "--int8-model", str(setup["out"])]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    rows = {r["impl"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert set(rows) == {"convnext", "convnext-int8"} and rows["convnext-int8"]["ratio"]["convnext"]["median"] > 0
    assert main([*args[:4], "64", *args[5:]]) == 2
    assert f"holds a convnext_atto at {RES} px: pass --model convnext_atto --res {RES}" in capsys.readouterr().err
    assert main([*args[:-4], "--int8-model", str(setup["out"])]) == 2
    assert "--int8-model times an INT8 file: add --dtype int8" in capsys.readouterr().err


def test_a_bad_val_folder_stops_before_any_file_is_written(setup, tmp_path, capsys):
    out = tmp_path / "q.xml"
    argv = ["quantize", "--model", "convnext_atto", "--checkpoint", str(setup["ckpt"]), "--calibrate",
            str(setup["calibrate"]), "--samples", "8", "--val", str(setup["calibrate"] / "3"), "--out", str(out)]
    _one_line_error(capsys, argv, "error:")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="is one INT8 model; it has no model_ema weights"):
        if not setup["out"].exists():
            assert main(setup["args"]) == 0
        load_model(checkpoint=setup["out"], key="model_ema")


def test_a_segmentation_run_is_named_as_such(tmp_path):
    ckpt = tmp_path / "seg.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"model": "upernet_convnext_tiny"}}, ckpt)
    with pytest.raises(UserError, match=r"holds a upernet_convnext_tiny \(segmentation\); use `convnext "
                                        r"segment` for it"):
        load_model(checkpoint=ckpt)
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"model": "cascade_mask_rcnn_convnext_tiny"}}, ckpt)
    with pytest.raises(UserError, match=r"\(detection\); use `convnext detect` for it"):  # was missed by prefix
        load_model(checkpoint=ckpt)


def test_a_damaged_bin_is_named_in_openvinos_own_words(setup, tmp_path, capsys):
    if not setup["out"].exists():
        assert main(setup["args"]) == 0
        capsys.readouterr()
    bad = tmp_path / "bad.xml"
    bad.write_bytes(setup["out"].read_bytes())
    bad.with_suffix(".bin").write_bytes(setup["out"].with_suffix(".bin").read_bytes()[:1000])
    _one_line_error(capsys, ["predict", "--checkpoint", str(bad), str(setup["val"] / "3")],
                    "or its .bin is damaged: Incorrect weights in bin file")


def test_export_names_an_int8_file_as_already_deployable(setup, tmp_path, capsys):
    if not setup["out"].exists():
        assert main(setup["args"]) == 0
        capsys.readouterr()
    _one_line_error(capsys, ["export", "--checkpoint", str(setup["out"]), "--format", "onnx", "--out",
                             str(tmp_path / "x.onnx")], "is an INT8 model (OpenVINO IR), already a deployable file")
    assert not (tmp_path / "x.onnx").exists()

import json
import os
import subprocess
import sys

import torch
from PIL import Image

from convnext.cli import main


def test_models_lists_registry(capsys):
    assert main(["models", "convnext_t*"]) == 0
    out = capsys.readouterr().out
    assert "convnext_tiny" in out and "28.59M" in out and "in22k_ft_in1k_384" in out


def test_info_json(capsys):
    assert main(["info", "convnext_tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 28_589_128 and round(info["gmacs"], 2) == 4.46
    assert round(info["activations_m"], 1) == 13.4
    tags = {w["tag"]: w for w in info["pretrained"]}
    assert tags["in1k"]["top1"] == 82.1 and tags["in22k_ft_in1k_384"]["crop_pct"] == 1.0


def test_info_text_at_384(capsys):
    assert main(["info", "convnext_base", "--res", "384"]) == 0
    out = capsys.readouterr().out
    assert "88,591,464" in out and "45.12" in out


def test_user_error_is_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "convnext", "info", "convnext_huge"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown model 'convnext_huge'" in proc.stderr and "Traceback" not in proc.stderr


def test_train_fits_the_recipe_unless_one_is_named(monkeypatch, tmp_path):
    import importlib

    training = importlib.import_module("convnext.tasks.classification.train")  # `convnext train` calls it there
    seen = []
    monkeypatch.setattr(training, "train", lambda config, resume: seen.append(config))
    common = ["train", "--data", str(tmp_path), "--epochs", "15", "--set", "ema=true", "mixup=0.5"]
    assert main(common) == 0 and main([*common, "--recipe", "in1k"]) == 0
    fitted, named = seen
    assert fitted.fit_to_run and fitted.recipe == "in1k" and not named.fit_to_run
    assert (fitted.ema, fitted.mixup) == (True, 0.5)  # several settings after one --set
    assert {"ema", "mixup", "epochs", "data"} <= set(fitted.given)
    assert "fit_to_run" not in fitted.given  # the command chose it, the user did not (issue 21)
    assert main([*common, "--set", "fit_to_run=false"]) == 0
    assert not seen[-1].fit_to_run and "fit_to_run" in seen[-1].given

def _atto_weights(folder):
    import torch

    from convnext.models import build_model
    from convnext.weights import save_weights

    torch.manual_seed(0)
    return save_weights(build_model("convnext_atto", num_classes=3), folder / "atto.safetensors")


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys):
    import pytest
    from PIL import Image

    weights = _atto_weights(tmp_path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "photo.png")
    cases = [
        (["train", "--lr", "-1"], "lr=-1.0: must be above 0"),
        (["train", "--output", str(tmp_path / "photo.png")], "a file of that name is in the way"),
        (["train", "--data", str(tmp_path), "--output", str(tmp_path / "img" / "run")],
         "is inside --data"),
        (["predict", str(tmp_path / "photo.png"), "--model", "convnext_atto", "--batch-size", "0"],
         "--batch-size must be at least 1, got 0"),
        (["train", "--lr", "nan"], "lr=nan: must be above 0"),
        (["train", "--workers", "-1"], "workers=-1"),
        (["train", "--set", "epochs=true"], "epochs=True: expected a whole number"),
        (["train", "--set", "clip_grad=-1"], "clip_grad=-1.0: must be above 0"),
        (["train", "--finetune", str(empty), "--output", str(tmp_path / "ft")], "empty"),
        (["evaluate", "--checkpoint", str(empty)], "the file is empty"),
        (["evaluate", "--checkpoint", str(weights), "--model", "convnext_atto", "--batch-size", "0"],
         "--batch-size must be at least 1"),
        (["predict", "--checkpoint", str(empty), str(tmp_path / "photo.png")], "the file is empty"),
        (["export", "--checkpoint", str(weights), "--model", "convnext_atto", "--format", "safetensors", "--out",
          str(tmp_path / "img")], "is a folder"),
        (["export", "--checkpoint", str(weights), "--model", "convnext_atto", "--format", "pt2", "--out",
          str(tmp_path / "x.pt2"), "--res", "0"], "--res must be from 32"),
        (["export", "--checkpoint", str(weights), "--model", "convnext_atto", "--format", "safetensors", "--out",
          str(tmp_path / "x.safetensors"), "--res", "64"], "--res means nothing for --format safetensors"),
        # issue 21: each of these was accepted, ran away, or ended in a traceback
        (["evaluate", "--checkpoint", str(weights), "--model", "convnext_atto", "--res", "100000"],
         "--res must be from 32 (the networks downsample 32x) to 2048, got 100000"),
        (["train", "--set", "crop_pct=0.000001"], "crop_pct=1e-06: must be in [0.5, 1]"),
        (["train", "--set", "warmup_epochs=1e308"], "warmup_epochs=1e+308: must be in [0, 10000]"),
        (["train", "--model", "upernet_convnext_tiny"], "is a segmentation model: `convnext segment train`"),
        (["train", "--model", "cascade_mask_rcnn_convnext_tiny"], "is a detection model: `convnext detect train`"),
        (["train", "--set", 'model_args={"in_chans": 1}'], "training reads images as RGB"),
        (["train", "--set", "lr"], "--set 'lr' has no value: write lr=VALUE"),
        (["train", "--set", "recipe=bogus"], "the recipe is chosen with --recipe"),
        (["info", "convnext_atto", "--num-classes", "0"], "--num-classes must be at least 1"),
        (["benchmark", "--model", ","], "--model names nothing"),
        (["robustness", "--checkpoint", str(weights), "--model", "convnext_atto", "--corruptions", ","],
         "--corruptions names nothing"),
        (["predict", str(tmp_path / "photo.png"), "--model", "convnext_atto", "--pretrained", "mine.pt"],
         "a weights file goes to --checkpoint"),
        (["export", "--checkpoint", str(weights), "--model", "convnext_atto", "--format", "onnx", "--out",
          str(tmp_path / "x.onnx"), "--opset", "999"], "--opset must be from 18"),
        (["export", "--checkpoint", str(weights), "--model", "convnext_atto", "--format", "onnx", "--out",
          str(tmp_path / "x.pt2")], "the name says pt2, but --format onnx writes onnx; name it x.onnx"),
        (["export", "--checkpoint", str(weights), "--model", "convnext_atto", "--format", "torchscript", "--out",
          str(tmp_path / "x.onnx")], "the name says onnx, but --format torchscript writes torchscript; name it x.pt"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == []  # no temporary file left behind
    with pytest.raises(SystemExit):
        main(["predict"])


def test_a_missing_data_folder_is_the_only_thing_said(tmp_path, capsys, monkeypatch):
    """More workers than cores: the lowered count is said once the data is found, not before its error."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    argv = ["train", "--data", str(tmp_path / "nowhere"), "--workers", "8", "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == f"convnext train: error: data folder not found: {tmp_path / 'nowhere'}"
    assert not (tmp_path / "run").exists()
    (tmp_path / "nowhere" / "a").mkdir(parents=True)
    (tmp_path / "nowhere" / "b").mkdir()
    for name in ("a", "b"):
        for i in range(4):
            Image.new("RGB", (40, 40), (60 * i, 0, 0)).save(tmp_path / "nowhere" / name / f"{i}.png")
    monkeypatch.setattr("convnext.engine.fit._periods", lambda run, net: None)  # the plan, not the training
    assert main([*argv, "--batch-size", "2", "--model", "convnext_atto", "--res", "32", "--epochs", "1"]) == 0
    assert "DataLoader workers 8 -> 2: no more than this process's CPU cores" in capsys.readouterr().out


def test_a_terminal_without_unicode_gets_escapes_not_a_crash(tmp_path):
    from PIL import Image

    weights = _atto_weights(tmp_path)
    Image.new("RGB", (40, 40), "red").save(tmp_path / "café_☕.png")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("LANG", "LC_ALL")}
    env.update(PYTHONIOENCODING="ascii", LC_ALL="C")
    proc = subprocess.run([sys.executable, "-m", "convnext", "predict", str(tmp_path), "--checkpoint", str(weights),
                           "--model", "convnext_atto", "--device", "cpu"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "caf\\xe9_\\u2615.png" in proc.stdout


def test_every_command_builds_its_arguments(capsys):
    """Arguments are added when a command is chosen: each command's --help builds them."""
    import pytest

    commands = ["models", "info", "demo", "train", "evaluate", "predict", "export", "roadmap", "benchmark",
                "robustness", "quantize", "segment", "detect", *(["segment", a] for a in ("train", "evaluate",
                "predict")), *(["detect", a] for a in ("train", "evaluate", "predict", "demo"))]
    for command in commands:
        argv = [command] if isinstance(command, str) else command
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        assert done.value.code == 0, argv
        out = capsys.readouterr().out
        assert out.startswith(f"usage: convnext {' '.join(argv)} "), argv
        after_usage = out[out.index("\n\n") + 2:]
        assert not after_usage.startswith(("options:", "positional arguments:")), f"{argv}: no description"
    with pytest.raises(SystemExit) as done:
        main(["detect", "train", "--set", "drop_path=0.2", "layer_decay=0.9", "--set"])
    assert done.value.code == 2 and "expected at least one argument" in capsys.readouterr().err


def test_one_device_parser():
    import pytest
    import torch

    from convnext.cli.common import parse_device
    from convnext.errors import UserError

    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="invalid --device 'gpu0'"):
        parse_device("gpu0")
    for name in ("meta", "mps", "xla", "cpu:5"):  # they parse, but nothing here runs on them (attacker trial)
        with pytest.raises(UserError, match=f"--device {name}: runs use cpu or cuda"):
            parse_device(name)


def test_runs_refuse_devices_they_cannot_run_on_before_making_a_folder(tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--device", "meta", "--output", str(folder)]) == 2
    assert "runs use cpu or cuda" in capsys.readouterr().err and not folder.exists()


def test_the_demo_replaces_only_an_earlier_demo_run(tmp_path, capsys):
    """Attacker trial: `convnext demo --output DIR` wiped whatever run DIR held."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"recipe": "in1k", "data": "/data"}')
    (folder / "last.pt").write_bytes(b"precious")
    assert main(["demo", "--output", str(folder)]) == 2
    assert "holds something other than an earlier demo run" in capsys.readouterr().err
    assert (folder / "last.pt").read_bytes() == b"precious"
    from convnext.cli.classify import _check_demo_folder

    killed = tmp_path / "killed"  # a demo killed before its first file: only the lock is left
    killed.mkdir()
    (killed / ".lock").write_text("99999999")
    _check_demo_folder(killed)  # no error: the rerun may start over


def test_export_refuses_outputs_it_would_damage_or_could_not_read_back(tmp_path, capsys):
    weights = _atto_weights(tmp_path)
    for out, message in ((tmp_path / "noext", "must end in .safetensors"), ("/dev/null", "not a regular file"),
                         (tmp_path / "d" / ("x" * 260 + ".safetensors"), "the name is too long")):
        argv = ["export", "--checkpoint", str(weights), "--model", "convnext_atto", "--format", "safetensors",
                "--out", str(out)]
        assert main(argv) == 2, out
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atto.safetensors"]
    argv = ["export", "--checkpoint", str(weights), "--model", "convnext_atto", "--format", "onnx", "--no-fuse",
            "--layer-norms", "channels", "--out", str(tmp_path / "x.onnx")]
    assert main(argv) == 2 and "leave out --no-fuse" in capsys.readouterr().err
    argv = ["benchmark", "--model", "convnext_atto", "--peers", "none", "--plot", str(tmp_path / "throughput")]
    assert main(argv) == 2 and "name a .png, .pdf or .svg file" in capsys.readouterr().err  # before measuring


def test_segment_demo_refuses_training_options_it_would_not_use(capsys, tmp_path):
    assert main(["segment", "train", "--demo", "--set", "warmup_ratio=-1", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "leave out --set" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing was made


def test_predict_in_bf16_agrees_with_float32(tmp_path, capsys):
    """``--dtype bf16`` runs the fused model with bf16 weights: probabilities to bf16 rounding."""
    import numpy as np
    from PIL import Image

    weights = _atto_weights(tmp_path)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    args = ["predict", str(tmp_path), "--checkpoint", str(weights), "--model", "convnext_atto", "--json",
            "--topk", "3"]
    runs = {}
    for dtype in ("fp32", "bf16"):
        assert main([*args, "--dtype", dtype]) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        runs[dtype] = [{p["index"]: p["probability"] for p in r["predictions"]} for r in results]
    assert len(runs["bf16"]) == 3 and max(max(probs.values()) for probs in runs["fp32"]) < 0.99  # not saturated
    for want, got in zip(runs["fp32"], runs["bf16"], strict=True):
        assert want.keys() == got.keys() == {0, 1, 2}
        assert max(abs(got[i] - want[i]) for i in want) < 0.02


def test_a_usage_error_is_one_line_too(capsys):
    import pytest

    with pytest.raises(SystemExit) as done:
        main(["predict", "x.png", "--dtype", "fp64"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert err.startswith("convnext predict: error: argument --dtype: invalid choice: 'fp64'") and "--help" in err


def test_threads_follow_the_idle_cores_unless_given(capsys):
    import pytest
    import torch

    from convnext.cli.common import choose_threads
    from convnext.errors import UserError

    assert choose_threads(None, cores=2, load=0.1, env=None) == 2  # a quiet machine: every core
    assert choose_threads(None, cores=2, load=1.8, env=None) == 1  # another process holds a core
    assert choose_threads(None, cores=16, load=40.0, env=None) == 1
    assert choose_threads(None, cores=2, load=0.1, env="1") is None  # OMP_NUM_THREADS decides
    assert choose_threads(None, cores=2, load=0.1, env="2,1") is None  # OpenMP's nested form
    for bad in ("abc", "0", "-1", "1.5"):
        with pytest.raises(UserError, match="OMP_NUM_THREADS="):
            choose_threads(None, cores=2, load=0.1, env=bad)
    assert choose_threads(3, cores=2, load=5.0, env="1") == 3
    with pytest.raises(UserError, match="--threads must be at least 1, got 0"):
        choose_threads(0, cores=2, load=0.0, env=None)
    before = torch.get_num_threads()
    assert main(["info", "convnext_atto", "--threads", "1"]) == 0
    assert torch.get_num_threads() == before  # set for the command, restored for an in-process caller
    capsys.readouterr()
    assert main(["info", "convnext_atto", "--threads", "0"]) == 2
    assert capsys.readouterr().err == "convnext info: error: --threads must be at least 1, got 0\n"


def test_benchmark_warns_when_other_work_holds_the_cores_it_needs():
    """`benchmark` keeps its thread count (every contender gets the same), so it says when the machine is busy."""
    from convnext.cli.deploy import busy_note

    assert busy_note(threads=2, cores=2, load=0.1) is None  # quiet
    assert busy_note(threads=1, cores=2, load=0.9) is None  # one thread, one idle core
    note = busy_note(threads=2, cores=2, load=1.8)
    assert note.startswith("the load average is 1.8 on 2 cores") and note.endswith("--threads 1 suffers less")
    assert "--threads 4" in busy_note(threads=16, cores=16, load=12.0)


def test_the_busy_note_follows_the_results_and_never_lengthens_an_error(monkeypatch, capsys):
    from convnext.cli import deploy

    monkeypatch.setattr(deploy, "cores_and_load", lambda: (2, 1.8))
    args = ["benchmark", "--model", "convnext_atto", "--res", "32", "--batch", "1", "--warmup", "0", "--peers",
            "none", "--threads", "2"]
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--rounds", "0"]) == 2
        assert capsys.readouterr().err.count("\n") == 1  # the error alone
        assert main([*args, "--rounds", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # benchmark keeps the count it was given
    out, err = capsys.readouterr()
    assert "convnext_atto" in out and err.splitlines()[-1].startswith("convnext benchmark: note: the load average")


def test_every_demo_has_one_spelling_and_refuses_options_it_would_not_use(monkeypatch, capsys):
    """Issue 21: `convnext demo [TASK]` runs each task's demo (the older spellings run the same functions);
    an option the chosen demo has no use for is one line, never ignored."""
    from convnext.cli import demo, segment

    called = {}
    for name in ("classify", "segment", "detect", "robustness"):
        monkeypatch.setattr(demo, f"run_{name}_demo", lambda args, name=name: called.update({name: args}) or 0)
    monkeypatch.setattr(segment, "run_demo", lambda args: called.update({"segment": args}) or 0)  # the old spelling
    assert main(["demo"]) == 0 and called.popitem()[1].output == "runs/demo"
    assert main(["demo", "segment", "--iters", "6", "--output", "o"]) == 0
    name, args = called.popitem()
    assert name.endswith("segment") and (args.iters, args.output) == (6, "o")
    assert main(["demo", "detect", "--model", "cascade_mask_rcnn_convnext_tiny"]) == 0
    assert called.popitem()[1].model == "cascade_mask_rcnn_convnext_tiny"
    assert main(["demo", "robustness", "--json", "--seed", "3"]) == 0 and called.popitem()[1].seed == 3
    assert main(["segment", "train", "--demo", "--iters", "6"]) == 0 and called.popitem()[1].iters == 6
    capsys.readouterr()
    for argv in (["demo", "--iters", "3"], ["demo", "segment", "--model", "x"], ["demo", "detect", "--seed", "1"],
                 ["demo", "robustness", "--iters", "3"], ["demo", "--seed", "0"], ["demo", "--workers", "0"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "has no use for --" in err and err.count("\n") == 1, argv
    assert not called


def test_the_robustness_demo_fills_the_run_defaults(monkeypatch):
    from convnext.cli import robustness

    seen = {}
    monkeypatch.setattr(robustness, "run", lambda args: seen.update(vars(args)) or 0)  # run_demo fills, then runs
    assert main(["demo", "robustness"]) == 0
    assert (seen["demo"], seen["seed"], seen["batch_size"], seen["workers"], seen["checkpoint"]) == (True, 0, 64, 0,
                                                                                                   None)


def test_info_bounds_each_side_of_a_resolution(capsys):
    assert main(["info", "convnext_tiny", "--res", "32x100000"]) == 2
    assert "--res must be from 32" in capsys.readouterr().err


def test_an_interrupted_training_command_says_how_to_resume(monkeypatch, capsys, tmp_path):
    from convnext.cli import classify

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(classify, "_train", interrupted)
    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == ("convnext train: interrupted (rerun the same command to resume from its last "
                                       "checkpoint)\n")
    monkeypatch.setattr(classify, "_evaluate", interrupted)
    assert main(["evaluate", "--data", str(tmp_path), "--checkpoint", str(tmp_path / "x.pt")]) == 130
    assert capsys.readouterr().err == "convnext evaluate: interrupted\n"


def test_the_command_line_keeps_freed_memory_for_its_process_and_in_process_callers_choose(monkeypatch, capsys):
    import convnext.deploy.allocator as allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert main(["models"]) == 0 and calls == []  # a Python caller's process is its own
    monkeypatch.setattr(sys, "argv", ["convnext", "models"])
    assert main() == 0 and calls == [1]  # the `convnext` command's process is the command's
    monkeypatch.setattr(sys, "argv", ["convnext", "benchmark", "--model", ","])
    assert main() == 2 and calls == [1]  # benchmark: --keep-freed-memory decides, for every contender
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU run: it would only hold host memory
    monkeypatch.setattr(sys, "argv", ["convnext", "models"])
    assert main() == 0 and calls == [1]
    capsys.readouterr()

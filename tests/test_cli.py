import json
import subprocess
import sys

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
    import convnext.cli as cli

    seen = []
    monkeypatch.setattr(cli, "train", lambda config, resume: seen.append(config))
    common = ["train", "--data", str(tmp_path), "--epochs", "15", "--set", "ema=true", "mixup=0.5"]
    assert main(common) == 0 and main([*common, "--recipe", "in1k"]) == 0
    fitted, named = seen
    assert fitted.fit_to_run and fitted.recipe == "in1k" and not named.fit_to_run
    assert (fitted.ema, fitted.mixup) == (True, 0.5)  # several settings after one --set
    assert {"ema", "mixup", "epochs", "data"} <= set(fitted.given)

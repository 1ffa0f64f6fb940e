import pytest

from convnext.errors import UserError
from convnext.tasks.classification.config import (
    RECIPES,
    TrainConfig,
    fit_to_run,
    resolve_config,
    scaled_lr,
)


def test_in1k_is_the_papers_table_5():
    c = resolve_config("in1k")
    assert (c.lr, c.lr_batch, c.weight_decay, c.epochs, c.warmup_epochs, c.min_lr) == (4e-3, 4096, 0.05, 300, 20, 1e-6)
    assert (c.randaug_n, c.randaug_m, c.randaug_mstd, c.reprob, c.smoothing) == (2, 9.0, 0.5, 0.25, 0.1)
    assert (c.mixup, c.cutmix, c.mixup_switch_prob, c.ema, c.ema_decay) == (0.8, 1.0, 0.5, True, 0.9999)
    assert (c.crop_scale, c.hflip, c.interpolation, c.layer_decay, c.clip_grad) == ((0.08, 1.0), 0.5, "bicubic",
                                                                                    1.0, None)
    assert c.drop_path == 0.1 and c.crop_pct == 0.875 and c.output == "runs/in1k-convnext_tiny"
    assert resolve_config("in1k", model="convnext_base").drop_path == 0.5


def test_in22k_and_finetune_recipes():
    c = resolve_config("in22k", model="convnext_xlarge")
    assert (c.epochs, c.warmup_epochs, c.ema, c.drop_path) == (90, 5, False, 0.2)
    f = resolve_config("finetune", model="convnext_large", res=384)
    assert (f.lr, f.epochs, f.weight_decay, f.mixup, f.cutmix) == (5e-5, 30, 1e-8, 0.0, 0.0)
    assert (f.head_init_scale, f.layer_decay, f.drop_path, f.crop_pct) == (0.001, 0.8, 0.3, 1.0)
    assert set(RECIPES) == {"in1k", "in22k", "finetune", "demo"}


def short_run(*settings, **flags):
    """What `convnext train --data DIR --epochs 15 --res 64 --batch-size 32` resolves to."""
    return resolve_config("in1k", ["fit_to_run=true", *settings], epochs=15, res=64, batch_size=32, **flags)


def test_a_short_small_batch_run_is_fitted_and_says_how():
    c = short_run()
    notes = fit_to_run(c, train_images=240)
    changed = {note.split()[0] for note in notes}
    assert changed == {"lr_scaling", "lr", "warmup_epochs", "ema", "mixup", "cutmix", "reprob", "randaug_n"}
    assert c.warmup_epochs == 1.0 and not c.ema and c.mixup == c.cutmix == c.reprob == 0 and c.randaug_n == 0
    assert scaled_lr(c, 32) == 2e-3  # not the linear rule's 3.1e-5, which starves the run
    assert any("EMA decay 0.9999 averages over ~10,000 steps but the run has 105" in note for note in notes)
    # the paper's recipe itself is untouched
    assert RECIPES["in1k"] == {} and resolve_config("in1k").ema is True


def test_fitting_leaves_what_the_user_gave_alone():
    c = short_run("ema=true", "mixup=0.8", "randaug_n=2", lr=1e-3)
    notes = fit_to_run(c, train_images=240)
    assert c.ema and c.mixup == 0.8 and c.randaug_n == 2 and scaled_lr(c, 32) == 1e-3  # --lr used as given
    assert not any(note.startswith(("ema", "mixup", "randaug_n", "lr ")) for note in notes)


def test_a_named_recipe_is_used_exactly():
    c = resolve_config("in1k", epochs=15, res=64, batch_size=32)
    before = c.to_dict()
    assert fit_to_run(c, train_images=240) == [] and c.to_dict() == before


def test_a_run_as_long_as_the_papers_keeps_the_papers_settings():
    c = resolve_config("in1k", ["fit_to_run=true", "batch_size=128", "accum_steps=4"])
    assert fit_to_run(c, train_images=1_281_167, world_size=8) == []


def test_settings_are_parsed_and_flags_complete_them():
    dims = [8, 16, 32, 64]
    c = resolve_config("in1k", ["layer_decay=0.7", "ema=false", "crop-scale=[0.5, 1]",
                                f"model_args={{\"dims\": {dims}}}", "clip_grad=1"], epochs=7, lr=None)
    assert (c.layer_decay, c.ema, c.crop_scale, c.model_args, c.clip_grad) == (0.7, False, (0.5, 1), {"dims": dims}, 1)
    assert c.epochs == 7 and c.lr == 4e-3  # a flag left out (None) leaves the recipe's value
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("settings,message", [
    (["layer_decy=0.7"], "did you mean layer_decay"),
    (["epochs"], r"--set 'epochs' has no value: write epochs=VALUE"),
    (["lr"], r"--set 'lr' has no value"),  # issue 21: not "did you mean lr?"
    (["recipe=bogus"], "the recipe is chosen with --recipe"),
    (["epochs=many"], "expected a whole number"),
    (["layer_decay=1.5"], r"layer_decay=1.5: must be in \(0, 1\]"),
])
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(UserError, match=message):
        resolve_config("in1k", settings)


def test_unknown_recipe():
    with pytest.raises(UserError, match="choose from in1k"):
        resolve_config("imagenet")


@pytest.mark.parametrize("settings,message", [
    (["clip_grad=-1"], "clip_grad=-1.0: must be above 0"),  # clip_grad_norm_ with a negative norm ascends
    (["lr=-1"], "lr=-1.0: must be above 0"),
    (["lr=nan"], "lr='nan': expected a number"),
    (["lr=1e999"], "lr=inf: must be above 0"),
    (["res=0"], r"res=0: must be in \[32, 2048\]"),
    (["workers=-1"], "workers=-1: must be at least 0"),
    (["seed=-1"], r"seed=-1: must be in \[0, 2147483647\]"),
    (["lr_batch=0"], "lr_batch=0: must be at least 1"),
    (["betas=[0.9]"], "betas=.*expected a list of 2 numbers"),
    (["betas=[0.9, 1.0]"], r"must be in \[0, 1\)"),
    (["mean=[0.5]"], "mean=.*expected a list of 3 numbers"),
    (["std=[1, 1, 0]"], "std=.*must be above 0"),
    (["interpolation=lanczos"], "choose from bicubic, bilinear, nearest"),
    (["lr_scaling=log"], "choose from linear, sqrt"),
    (["ema_decay=2"], r"ema_decay=2.0: must be in \[0, 1\)"),
    (["drop_path=1.5"], r"drop_path=1.5: must be in \[0, 1\)"),
    (["crop_scale=[2,1]"], r"crop_scale=\[2.0, 1.0\]: must be in \(0, 1\]"),
    (["crop_scale=[0.9,0.5]"], "the smaller value comes first"),
    (['model_args={"dims":[1,2,3]}'], "convnext_tiny cannot be built with model_args"),
    (['model_args={"num_classes":3}'], "num_classes come from the run's own settings"),
    (["model_args=[1]"], "model_args=.*expected a JSON object"),
    (["epochs=true"], "epochs=True: expected a whole number"),
    (["ema=1"], "ema=1: expected true or false"),
    (["hflip=2"], r"hflip=2.0: must be in \[0, 1\]"),
    (["warmup_epochs=-5"], r"warmup_epochs=-5.0: must be in \[0, 10000\]"),
    (["save_every=-1"], "save_every=-1: must be at least 0"),
    (["randaug_n=-1"], "randaug_n=-1: must be at least 0"),
    (["mixup=-1"], "mixup=-1.0: must be at least 0"),
    (["crop_pct=0"], r"crop_pct=0.0: must be in \[0.5, 1\]"),
])
def test_every_setting_is_range_checked(settings, message):
    with pytest.raises(UserError, match=message):
        resolve_config("in1k", settings)


def test_flags_are_checked_like_settings():
    with pytest.raises(UserError, match="lr=nan: must be above 0"):
        resolve_config("in1k", lr=float("nan"))
    with pytest.raises(UserError, match=r"res=0: must be in \[32, 2048\]"):
        resolve_config("in1k", res=0)
    c = resolve_config("demo", ["clip_grad=1", "betas=[0, 0.5]"])
    assert c.clip_grad == 1.0 and isinstance(c.clip_grad, float) and c.betas == (0.0, 0.5)


def test_a_setting_given_as_a_flag_and_in_set_is_refused_unless_equal():
    with pytest.raises(UserError, match=r"epochs is given twice, as --epochs 6 and --set epochs=2: give it once"):
        resolve_config("in1k", ["epochs=2"], epochs=6)
    assert resolve_config("in1k", ["epochs=6"], epochs=6).epochs == 6

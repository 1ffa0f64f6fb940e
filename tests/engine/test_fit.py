"""The one engine on a toy task: accumulation equals the full batch (and casts weights once per step under amp),
a non-finite loss stops the run with one line and an intact last checkpoint, an interrupted run resumes bit for
bit, and a period's row and the summary carry what the task reports."""

import json

import pytest
import torch
from torch import nn

from convnext.engine.config import RunConfig
from convnext.engine.fit import fit
from convnext.engine.task import Schedule, StepOutput, Task
from convnext.errors import UserError

X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1


class Regression(Task):
    """Least squares on 32 fixed points, in batches taken in order; validation: the mean squared error."""

    best_key, metric = "neg_mse", "val_neg_mse"

    def __init__(self, config: RunConfig, nan_at: int | None = None):
        self.config, self.nan_at, self.calls = config, nan_at, 0
        self.classes = ["y"]

    def prepare(self, rt, say):
        steps = len(X) // (self.config.batch_size * self.config.accum_steps)
        return Schedule(3, steps, 3 * steps)

    def build_model(self, rt, fresh, say):
        return nn.Linear(4, 1)

    def lr_factor(self, step):
        return 1.0

    def batches(self, period, start, rt):
        size = self.config.batch_size
        return iter([(X[i:i + size], Y[i:i + size]) for i in range(start, len(X), size)])

    def step(self, net, batch, device):
        self.calls += 1
        x, y = batch
        loss = ((net(x).squeeze(1) - y) ** 2).mean()
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return StepOutput({"loss": loss, "mse": loss}, len(x))

    def validate(self, model, rt):
        with torch.no_grad():
            return {"val_neg_mse": -((model(X).squeeze(1) - Y) ** 2).mean().item()}


def config(tmp_path, name="run", **kw):
    return RunConfig(recipe="toy", model="linear", output=str(tmp_path / name), lr=0.05, weight_decay=0.0,
                     device="cpu", workers=0, **kw)


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_accumulated_micro_batches_train_as_the_full_batch(tmp_path):
    fit(Regression(config(tmp_path, "full", batch_size=8)), log=lambda _: None)
    fit(Regression(config(tmp_path, "accum", batch_size=4, accum_steps=2)), log=lambda _: None)
    full, accum = weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "accum" / "last.pt")
    for key in full:
        torch.testing.assert_close(accum[key], full[key], rtol=1e-5, atol=1e-6)


def test_rows_and_summary_carry_the_tasks_metrics(tmp_path):
    lines = []
    summary = fit(Regression(config(tmp_path, batch_size=8)), log=lines.append)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["mse"] == pytest.approx(rows[-1]["train_loss"], rel=1e-5)  # a part, per image
    assert summary["final"]["val_neg_mse"] == rows[-1]["val_neg_mse"]
    assert sum("epoch 3/3" in line for line in lines) == 1


def test_a_non_finite_loss_stops_the_run_with_one_line(tmp_path):
    task = Regression(config(tmp_path, batch_size=8, save_every_steps=1), nan_at=3)
    with pytest.raises(UserError, match=r"the loss became nan at epoch 1, step 3: training stopped; the last good "
                                        r"checkpoint .* is intact and a rerun resumes from it") as err:
        fit(task, log=lambda _: None)
    assert "\n" not in str(err.value)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"]) == (0, 2)
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_a_rerun_resumes_exactly_after_a_stop_mid_epoch(tmp_path):
    straight = config(tmp_path, "straight", batch_size=4, save_every_steps=1)
    fit(Regression(straight), log=lambda _: None)

    class Stop(Exception):
        pass

    class StopsOnce(Regression):
        def step(self, net, batch, device):
            if self.calls == 13:  # 13 steps done: epoch 2, step 5 of 8
                raise Stop
            return super().step(net, batch, device)

    stopped = config(tmp_path, "stopped", batch_size=4, save_every_steps=1)
    with pytest.raises(Stop):
        fit(StopsOnce(stopped), log=lambda _: None)
    lines = []
    fit(Regression(stopped), log=lines.append)
    assert any("resuming" in line and "epoch 2, step 5" in line for line in lines), lines
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "stopped" / "last.pt")
    for key in a:
        assert torch.equal(a[key], b[key])


def test_a_full_disk_while_writing_best_pt_is_redone_by_the_rerun(tmp_path, monkeypatch):
    """Issue 21: the rerun after a failed ``best.pt`` write must leave every file its summary names."""
    import errno

    from convnext.engine import checkpoints
    from convnext.files import atomic_write

    real_save, failed = checkpoints.save_state, []

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    def disk_full_once(state, path):
        if path.name == "best.pt" and state["epoch"] == 2 and not failed:
            failed.append(path.name)
            atomic_write(path, full)  # the disk fills while the atomic writer writes
        real_save(state, path)

    monkeypatch.setattr(checkpoints, "save_state", disk_full_once)

    class KeepsBest(Regression):
        def validate(self, model, rt):  # a score above the engine's starting -1 that rises every epoch
            return {"val_neg_mse": 1 / (1 - super().validate(model, rt)["val_neg_mse"])}

    with pytest.raises(UserError, match="disk"):  # one line: the disk is full, rerun the same command
        fit(KeepsBest(config(tmp_path, batch_size=4)), log=lambda _: None)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1  # the commit point held
    fit(KeepsBest(config(tmp_path, batch_size=4)), log=lambda _: None)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert failed == ["best.pt"] and last["epoch"] == 3 and last["best"]["epoch"] == 3
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 3


class _WeightCasts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the casts of the model's weight matrix (shape (1, 4)) that reach the kernels."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].shape == (1, 4):
            self.count += 1
        return func(*args, **(kwargs or {}))


class CountedRegression(Regression):
    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.casts = _WeightCasts()

    def step(self, net, batch, device):
        with self.casts:
            return super().step(net, batch, device)


def test_under_amp_weights_are_cast_once_per_optimizer_step_not_per_micro_batch(tmp_path):
    task, lines = CountedRegression(config(tmp_path, batch_size=4, accum_steps=2, amp=True)), []
    fit(task, log=lines.append)
    assert ("mixed precision: bfloat16 autocast for the forward passes; weights, gradients and optimizer state stay "
            "float32") in lines  # said, not only stored in config.json
    steps = 3 * len(X) // 8  # three periods of four optimizer steps, two micro-batches each
    assert task.calls == 2 * steps
    assert task.casts.count == steps
    saved = weights(tmp_path / "run" / "last.pt")
    assert all(value.dtype == torch.float32 for value in saved.values())  # parameters stay float32

"""``fit(task)``: the one training run of every task, top to bottom — the locked folder, the task's data and
schedule, the model with its EMA, optimizer and schedule, an exact resume, then every period (an epoch, or an
interval of iterations) trained by `convnext.engine.loop` and closed by validation, a row of metrics.jsonl and
a checkpoint; at the end summary.json and curves.png. Under ``torchrun`` it runs DDP, one process per device,
with the main process writing the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import UserError
from .checkpoints import CheckpointManager, check_resumable, check_same_task
from .config import keep_run_settings
from .loop import Trainer, train_period
from .optim import build_optimizer
from .records import RunLog
from .run import open_run, restore_or_start_over, seed_process
from .runtime import Runtime, autocast_dtype, cap_workers
from .state import RunState
from .task import Say, Schedule, Task


def fit(task: Task, *, resume: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the training ``task`` describes; returns the summary also saved as summary.json.

    With ``resume`` (the default) an existing ``last.pt`` in the output folder is picked up and the run
    continues from exactly where it was saved, provided it is the same run (same settings and classes);
    without it the folder's previous run is replaced. A folder serves one run at a time.
    """
    with open_run(task.config.output, task.config.device) as (rt, folder):
        say = (log or (lambda text: print(text, flush=True))) if rt.main else (lambda text: None)
        return _fit(task, rt, folder, resume, say)


def build_state(task: Task, rt: Runtime, *, fresh: bool, say: Say) -> tuple[RunState, torch.nn.Module]:
    """The task's model, its EMA, AdamW over the model's layer-decay groups with the task's schedule, the loss
    scaler; and the network the steps run (DDP-wrapped under torchrun)."""
    config = task.config
    torch.manual_seed(config.seed)
    model = task.build_model(rt, fresh, say)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
           if config.ema else None)
    optimizer, schedule = build_optimizer(
        model, lr=task.peak_lr(), weight_decay=config.weight_decay, layer_decay=config.layer_decay,
        betas=config.betas, eps=config.eps, lr_factor=task.lr_factor, **task.optimizer_options())
    scaler = torch.amp.GradScaler(rt.device.type, enabled=autocast_dtype(config.amp, rt.device) is torch.float16)
    state = RunState(model, ema, optimizer, schedule, scaler, best={task.best_key: -1.0, "epoch": None},
                     best_ema={task.best_key: -1.0, "epoch": None})
    net = model
    if rt.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                      find_unused_parameters=task.find_unused_parameters)
    return state, net


def _fit(task: Task, rt: Runtime, folder: CheckpointManager, resume: bool, say: Say) -> dict:
    config = task.config
    saved = folder.resume_state() if resume else None
    if saved is None:
        workers_note = cap_workers(config)
        schedule = task.prepare(rt, say)
    else:  # what the run would do is said once it may resume: a refused resume says only why
        check_same_task(saved, folder.last, config)
        lines = [f"resume: {note}" for note in keep_run_settings(saved["config"], config)]
        workers_note = cap_workers(config)  # the run's own count too: this machine's cores decide
        schedule = task.prepare(rt, lines.append)
        check_resumable(saved, folder.last, config, task.classes)
        for line in lines:
            say(line)
    if workers_note:  # after the data is found: a missing folder's error stands alone
        say(workers_note)
    state, net = build_state(task, rt, fresh=saved is None, say=say)
    seed_process(config.seed, rt.rank)
    if restore_or_start_over(state, saved, folder, rt, resume=resume):
        say(f"{folder.folder} already holds a finished {schedule.length()} run (--restart to train again)"
            if state.epoch >= schedule.periods else
            f"resuming {folder.last} at {schedule.position(state.epoch, state.step)}")
    run = Run(task, rt, folder, RunLog(folder.folder, main=rt.main, tensorboard=config.tensorboard), state,
              schedule, say)
    run.log.config(config.to_dict())
    task.start(folder.folder, rt.main)
    try:
        _periods(run, net)
    finally:
        run.log.close()
    summary = run.summary()
    run.log.finish(summary, state.history, task.plot_curves)
    line = task.final_line(summary, folder.folder)
    if line:
        say(line)
    return summary


@dataclass
class Run:
    """A run under way: its task, folder, state and schedule, and what ends each period."""

    task: Task
    rt: Runtime
    folder: CheckpointManager
    log: RunLog
    state: RunState
    schedule: Schedule
    say: Say
    started: float = 0.0  # perf_counter at the start of this session

    def elapsed(self) -> float:
        return self.state.elapsed + time.perf_counter() - self.started

    def diverged(self, what: str, step: int | None) -> UserError:
        """The error that stops a run whose loss or weights stopped being finite; ``step`` None: at the end of
        the period just finished."""
        period = self.state.epoch
        where = (self.schedule.position(period, step + 1) if step is not None else
                 f"the end of {self.schedule.position(period - 1, self.schedule.steps(period - 1))}")
        return UserError(f"{what} at {where}: training stopped; {self.folder.where_to_resume()}. Start over "
                         "(--restart, or a new --output) with a lower lr, a longer warm-up, or gradient clipping "
                         "(--set clip_grad=1.0).")

    def save(self, *, improved: bool = False, ema_improved: bool = False, period_end: bool = False) -> None:
        """Checkpoint the state (a collective under DDP); the main process checks it and writes it."""
        state, task = self.state, self.task
        snapshot = state.checkpoint(self.rt, config=task.config.to_dict(), classes=task.classes,
                                    elapsed=self.elapsed())
        snapshot.update(task.checkpoint_extras())
        if not self.rt.main:
            return
        if not state.finite():
            raise self.diverged("the weights became non-finite", None if period_end else state.step - 1)
        if not period_end:
            self.folder.save_step(snapshot)
            return
        ema_record = None
        if ema_improved:
            ema_record = {"model": snapshot["model_ema"], "epoch": state.epoch,
                          task.best_key: state.best_ema[task.best_key], "classes": task.classes,
                          "config": snapshot["config"]}
        every = task.config.save_every
        self.folder.save_epoch(snapshot, improved=improved, ema_record=ema_record,
                               periodic=bool(every) and state.epoch % every == 0)

    def end_period(self, seconds: float, parts: dict[str, float]) -> dict:
        """Validate, record the period's row, keep the best, checkpoint, and say how it went."""
        state, task = self.state, self.task
        row = self._train_row(seconds, parts)
        row.update(task.validate(state.model, self.rt))
        ema_key = f"ema_{task.best_key}"
        if state.ema is not None:
            row[ema_key] = task.validate(state.ema.module, self.rt).get(task.metric)
        row["bad_images"] = sorted(state.bad_images)
        state.history.append(row)
        improved = row.get(task.metric) is not None and row[task.metric] > state.best[task.best_key]
        if improved:
            state.best = task.best_record(row)
        ema_improved = row.get(ema_key) is not None and row[ema_key] > state.best_ema[task.best_key]
        if ema_improved:
            state.best_ema = {task.best_key: row[ema_key], "epoch": row["epoch"]}
        state.epoch, state.step, state.epoch_loss, state.epoch_images = state.epoch + 1, 0, 0.0, 0
        self.save(improved=improved, ema_improved=ema_improved, period_end=True)
        self.log.epoch(state.history)
        self.say(f"{self._period_text(row)}  train loss {row['train_loss']:.4f}{task.row_text(row)}  "
                 f"lr {row['lr']:.3g}  {row['images_per_s']:.1f} img/s  {seconds:.1f}s")
        return row

    def _train_row(self, seconds: float, parts: dict[str, float]) -> dict:
        state, rt, schedule = self.state, self.rt, self.schedule
        totals = torch.tensor([state.epoch_loss, float(state.epoch_images)], dtype=torch.float64, device=rt.device)
        if rt.world_size > 1:
            torch.distributed.all_reduce(totals)
        row = dict(epoch=state.epoch + 1)
        if schedule.unit == "iteration":
            row["iter"] = state.epoch * schedule.steps_per_period + schedule.steps(state.epoch)
        row.update(train_loss=(totals[0] / totals[1]).item() if totals[1] else None, **parts,
                   lr=max(state.schedule.get_last_lr()), images_per_s=totals[1].item() / seconds,
                   epoch_time_s=seconds)
        return row

    def _period_text(self, row: dict) -> str:
        if self.schedule.unit == "iteration":
            return f"iteration {row['iter']}/{self.schedule.total_steps}"
        return f"epoch {row['epoch']}/{self.schedule.periods}"

    def summary(self) -> dict:
        state, config = self.state, self.task.config
        final = {k: v for k, v in state.history[-1].items() if k != "bad_images"} if state.history else None
        return dict(model=config.model, recipe=config.recipe, **self.task.summary(state), final=final,
                    time_s=self.elapsed(), skipped_images=[self.task.describe(i) for i in sorted(state.bad_images)])


def _periods(run: Run, net: torch.nn.Module) -> None:
    """Every period still to run."""
    state, rt, task, schedule = run.state, run.rt, run.task, run.schedule
    config = task.config
    trainer = Trainer(task=task, net=net, rt=rt, accum_steps=config.accum_steps, clip_grad=config.clip_grad,
                      amp_dtype=autocast_dtype(config.amp, rt.device), save_every_steps=config.save_every_steps,
                      diverged=run.diverged)
    if trainer.amp_dtype is not None and state.epoch < schedule.periods:
        run.say(f"mixed precision: {str(trainer.amp_dtype).removeprefix('torch.')} autocast for the forward passes; "
                "weights, gradients and optimizer state stay float32")
    run.started = time.perf_counter()
    for period in range(state.epoch, schedule.periods):
        steps = schedule.steps(period)
        batches = task.batches(period, state.step * config.accum_steps * config.batch_size, rt)
        state.model.train()
        skipped_before = len(state.bad_images)
        desc = (f"epoch {period + 1}/{schedule.periods}" if schedule.unit == "epoch" else
                f"iterations {period * schedule.steps_per_period + state.step + 1}-"
                f"{period * schedule.steps_per_period + steps}")
        seconds, parts = train_period(trainer, state, batches, steps, desc=desc, show=rt.main,
                                      save_step=run.save)
        run.end_period(seconds, parts)
        if len(state.bad_images) > skipped_before:
            count = len(state.bad_images)
            examples = "; ".join(task.describe(i) for i in sorted(state.bad_images)[:3])
            run.say(f"skipped {count} unusable training sample{'s' * (count != 1)} so far, e.g. {examples}")
        _check_mostly_readable(task, _all_ranks(state.bad_images, rt))


def _all_ranks(indices: set[int], rt: Runtime) -> set[int]:
    """The union of every rank's ``indices`` (each rank sees its share of the samples); a collective: every
    rank calls it."""
    if rt.world_size == 1:
        return indices
    gathered: list = [None] * rt.world_size
    torch.distributed.all_gather_object(gathered, sorted(indices))
    return set().union(*gathered)


def _check_mostly_readable(task: Task, unusable: set[int]) -> None:
    """Stop a run whose training set is mostly unusable: each bad sample is replaced by the next good one, so
    such a run would train on a few images over and over while looking healthy."""
    size = task.train_samples()
    if size and 2 * len(unusable) > size:
        examples = "; ".join(task.describe(i) for i in sorted(unusable)[:3])
        raise UserError(f"{len(unusable)} of the {size} training samples could not be used (e.g. {examples}): "
                        "fix or remove them, then rerun")

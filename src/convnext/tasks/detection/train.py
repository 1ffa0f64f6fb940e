"""Training a detector (Mask R-CNN / Faster R-CNN on a ConvNeXt backbone) through the one engine
(`convnext.engine.fit`). The step is torchvision's: the detector returns its losses, the task adds them up;
validation is COCO box (and mask) AP; the schedule is mmdet's warm-up and lr steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...data.images import EpochSampler
from ...engine.fit import fit
from ...engine.runtime import Runtime
from ...engine.task import Say, Schedule, StepOutput, Task
from ...errors import UserError
from .config import DetectConfig, fit_to_run, lr_factor
from .data import CropPolicy, DetectionItems, collate, load_datasets
from .demo import demo_data
from .evaluate import evaluate_detector
from .predict import build_run_detector


def train_detector(config: DetectConfig, *, resume: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) a detection run (`convnext.engine.fit`); returns the summary also saved as
    summary.json. As for classification, rerunning the same command continues the run exactly."""
    return fit(DetectionTask(config), resume=resume, log=log)


class DetectionTask(Task):
    best_key, metric = "box_ap", "box_ap"
    find_unused_parameters = True  # a batch without masks leaves the mask head without gradients

    def __init__(self, config: DetectConfig):
        self.config = config

    def prepare(self, rt: Runtime, say: Say) -> Schedule:
        config = self.config
        paths = (config.data, config.val_data) if config.data else demo_data(Path(config.output) / "data", say)
        self.train, self.val = load_datasets(*paths, say)
        self.classes = self.train.classes
        for note in fit_to_run(config, len(self.train), rt.world_size):
            say(f"fitted to this run: {note}")
        eff_batch = config.batch_size * config.accum_steps * rt.world_size
        self.steps_per_epoch = len(self.train) // eff_batch
        if self.steps_per_epoch == 0:
            raise UserError(f"the training set has {len(self.train)} usable images, fewer than one batch "
                            f"({eff_batch}); lower --batch-size")
        say(f"{len(self.train)} training images, {len(self.classes)} categories; batch {eff_batch} = "
            f"{config.batch_size} x {config.accum_steps} accumulation x {rt.world_size} processes; AdamW lr "
            f"{config.lr:g} (given for batch {config.lr_batch}, used as is), wd {config.weight_decay:g}, layer "
            f"decay {config.layer_decay:g}, drop path {config.drop_path:g}; {config.epochs} epochs, lr x0.1 after "
            f"epochs {', '.join(f'{s:g}' for s in config.lr_steps)}; training shorter sides "
            f"{list(config.min_sizes)} (longer <= {config.max_size}), test {config.test_size}")
        policy = CropPolicy.for_sizes(config.min_sizes, config.max_size) if config.augment == "detr" else None
        if policy is not None:
            say(f"augmentation: flips, the {policy.describe()}, then the multi-scale resize")
        items = DetectionItems(self.train, train=True, flip=config.hflip, seed=config.seed, policy=policy)
        self.sampler = EpochSampler(items, world_size=rt.world_size, rank=rt.rank, seed=config.seed)
        # no generator of its own: the loader draws from the global one, as detection runs always did (the
        # random stream, and with it the demo's figures, stays that of earlier versions)
        self.loader = DataLoader(items, batch_size=config.batch_size, sampler=self.sampler, drop_last=True,
                                 collate_fn=collate, num_workers=config.workers,
                                 persistent_workers=config.workers > 0)
        return Schedule(config.epochs, self.steps_per_epoch, self.steps_per_epoch * config.epochs)

    def build_model(self, rt: Runtime, fresh: bool, say: Say) -> nn.Module:
        config = self.config
        model = build_run_detector(config, len(self.classes) + 1)
        if rt.world_size > 1:  # the cascade's box heads normalise over the RoIs of every process, as the official
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # configs' SyncBN (a no-op without BatchNorm)
        if fresh and config.backbone:
            say(model.load_weights(config.backbone, config.backbone_key))
        elif fresh:
            say("backbone initialised at random (no --backbone checkpoint): expect far lower AP than from ImageNet "
                "weights")
        return model.to(rt.device)

    def lr_factor(self, step: int) -> float:
        return lr_factor(step, self.steps_per_epoch, self.config)

    def step(self, net: nn.Module, batch, device: torch.device) -> StepOutput:
        images, targets, bad = batch
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        losses = net(images, targets)
        return StepOutput({"loss": sum(losses.values()), **losses}, len(images), list(bad))

    def validate(self, model: nn.Module, rt: Runtime) -> dict:
        """Box (and mask) AP on the validation set, on the main process."""
        if self.val is None or not rt.main:
            return {}
        metrics = evaluate_detector(model, self.val, device=rt.device, batch_size=self.config.batch_size,
                                    progress=True)
        row = dict(box_ap=metrics["bbox"]["AP"], box_ap50=metrics["bbox"]["AP50"])
        if "segm" in metrics:
            row.update(mask_ap=metrics["segm"]["AP"], mask_ap50=metrics["segm"]["AP50"])
        return dict(row, val=metrics)

    def best_record(self, row: dict) -> dict:
        return dict(box_ap=row["box_ap"], mask_ap=row.get("mask_ap"), epoch=row["epoch"])

    def row_text(self, row: dict) -> str:
        text = f"  box AP {row['box_ap']:.1f}" if "box_ap" in row else ""
        return text + (f"  mask AP {row['mask_ap']:.1f}" if "mask_ap" in row else "")

    def describe(self, index: int) -> str:
        return self.train.describe(index)

    def plot_curves(self, history: list[dict], path: Path) -> None:
        from ...plots import plot_panels

        plot_panels(history, "epoch", "epoch", [
            ("training loss (sum of the detector's losses)", "loss", [("train_loss", "train")]),
            ("validation (COCO AP)", "AP", [("box_ap", "box AP"), ("box_ap50", "box AP50"), ("mask_ap", "mask AP"),
                                            ("mask_ap50", "mask AP50")])], path, best="box_ap")

    def summary(self, state) -> dict:
        best = state.best
        return dict(classes=self.classes, epochs=self.config.epochs,
                    best_box_ap=best["box_ap"] if best["epoch"] else None, best_mask_ap=best.get("mask_ap"),
                    best_epoch=best["epoch"], data_notes=self.train.notes())

    def checkpoint_extras(self) -> dict:
        return {"category_ids": self.train.cat_ids}

    def final_line(self, summary: dict, folder: Path) -> str | None:
        if summary["best_box_ap"] is None:
            return None
        return f"best box AP {summary['best_box_ap']:.1f} (epoch {summary['best_epoch']}); run folder {folder}"

"""The model protocol: what the rest of the package may assume about a model, written down once.

Training, export, weight loading and the command line take any ``nn.Module``: ours (the ConvNeXt classifiers and
backbones, the roadmap nets, UperNet, the detectors) and foreign ones registered with ``register_model``. So that
none of them has to guess with ``getattr``/``hasattr`` what a model offers, each capability is a
`typing.Protocol` here, checked with ``isinstance``:

- `ConvNeXtModel`: every model of ours. Its input (`ImageModel`: ``in_chans`` channels; sides of at least
  ``stride``) and its layer-wise lr-decay map (`LayerDecay`), which the optimizer builds its groups from.
- `TaskModel`: a ConvNeXt model with its own checkpoint layouts (UperNet, the detectors): ``load_weights``
  takes the task model's own checkpoint, or a classifier's for its backbone.
- `SelfCounting`: a model whose cost is not one forward pass of one image batch (the detectors count
  themselves at the paper's 1280 x 800 test size).
- `FeatureBackbone`: a dense-prediction trunk (`ConvNeXtFeatures`): no classifier, a list of maps out.

Some attributes are given by the entry point that made the model, not by its constructor, so that a model
built directly (``UperNet(...)``) has none of them:

- `Named`: ``model_name``, the registered name: set by ``build_model`` (so by ``create_model`` and
  ``load_model`` too).
- `Preprocessed`: ``pretrained_cfg``, the evaluation preprocessing of its weights: set by ``create_model`` and
  ``load_model``; what predict, evaluate, export and the robustness suites read.
- `FromRun`: ``run_config``, the training configuration that rebuilds it: set by ``load_model`` on a model
  from a ``convnext train`` checkpoint, and kept by ``convnext export --format safetensors``.

The protocols are ``runtime_checkable``: ``isinstance`` checks that the members exist, not their types or
signatures. Members are plain attributes and methods, never submodules or parameters: from Python 3.12
``isinstance`` looks attributes up statically, and an ``nn.Module`` keeps those outside ``__dict__``.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class LayerDecay(Protocol):
    """A model that names the depth of each of its parameters for layer-wise lr decay.

    Every model of ours has it; a foreign model may add it, else `convnext.engine.optim.layer_ids` falls back
    to the order in which a forward pass reaches its blocks.
    """

    def layer_decay_ids(self, num_layers: int | None = None) -> tuple[dict[str, int], int]:
        """``(ids, top)``: the layer id of every parameter name, and the id that trains at the full lr; a
        parameter of id ``i`` gets lr scale ``layer_decay ** (top - i)``. ``num_layers`` overrides the number
        of decayed layers where the model's official recipe has that setting (UperNet: the segmentation
        configs' ``num_layers``); other models accept and ignore it."""
        ...


@runtime_checkable
class ImageModel(Protocol):
    """A model of image batches ``(N, in_chans, H, W)``: what the dummy inputs of FLOP counts, export
    examples and the layer-decay fallback's forward pass are made of. Foreign models may have it; without
    it, three channels are assumed."""

    in_chans: int


@runtime_checkable
class ConvNeXtModel(ImageModel, LayerDecay, Protocol):
    """Every model of ours (tests/models/test_protocol.py checks each registered name)."""

    in_chans: int
    stride: int  # the network's total downsampling: the smallest input side it takes (`check_input`)


@runtime_checkable
class TaskModel(ConvNeXtModel, Protocol):
    """A model with checkpoint layouts of its own (UperNet, the detectors), which ``create_model(...,
    checkpoint=...)`` and the task trainers hand the file to instead of `convnext.weights.load_checkpoint`."""

    def load_weights(self, source: str | os.PathLike, /) -> object:
        """Load ``source``: the task model's own weights (official, Hugging Face or our runs' layouts), or a
        classification checkpoint, which initialises the backbone only. Returns what was loaded."""
        ...


@runtime_checkable
class SelfCounting(Protocol):
    """A model that reports its own size and cost (what ``convnext info`` prints) because one forward pass of
    an image batch at a given side does not measure it: the detectors take lists of images, resized to their
    own test size."""

    def complexity(self) -> dict:
        """``params``, ``gmacs`` and the ``res`` they were counted at."""
        ...


@runtime_checkable
class FeatureBackbone(Protocol):
    """A dense-prediction trunk: no classifier (a classifier checkpoint's ``norm``/``head`` do not apply),
    ``forward`` returns one normalised map per entry of ``feature_channels``."""

    features_only: bool
    feature_channels: list[int]


@runtime_checkable
class Named(Protocol):
    """A model made by ``build_model`` (or ``create_model``/``load_model``), which records the name."""

    model_name: str


@runtime_checkable
class Preprocessed(Protocol):
    """A model with weights, from ``create_model`` or ``load_model``: ``pretrained_cfg`` is the evaluation
    preprocessing (``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``; ``label_names`` when
    the weights carry class names)."""

    pretrained_cfg: dict


@runtime_checkable
class FromRun(Protocol):
    """A model rebuilt from a ``convnext train`` checkpoint by ``load_model``: ``run_config`` is that run's
    configuration, which rebuilds the model wherever the file goes."""

    run_config: dict


def model_name(model: nn.Module) -> str:
    """The name to show for ``model`` in messages and reports: its registered name, else its class name (a
    model built by its constructor, or a foreign one)."""
    return model.model_name if isinstance(model, Named) else type(model).__name__

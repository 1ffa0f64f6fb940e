"""The settings every training run shares, declared once with their valid ranges, and the one way a run's
settings are resolved, checked, fitted and stored.

A task's configuration is a dataclass that extends `RunConfig` with its own fields (and its own defaults for
shared ones) and extends ``RANGES`` / ``CHOICES`` with its own limits. For every task the settings resolve in
the same order: the dataclass defaults, the named recipe, ``--set key=value`` settings, the command line's
own flags; then `RunConfig.complete` fills values that depend on others, and `check` refuses any value of the
wrong type or out of range with one line naming it, before a file is read. What the user gave is recorded in
``given``: fitting a recipe to a short run (`apply_fits`) never changes those.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import torch

from ..errors import UserError
from ..models import build_model


@dataclass(frozen=True)
class Range:
    """The numbers a setting takes: ``[low, high]``, either end open; a tuple's range holds for each value."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'above' if self.open_low else 'at least'} {self.low:g}"
        high = str(self.high) if self.high >= 1e6 else f"{self.high:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {high}{')' if self.open_high else ']'}"


POSITIVE, NON_NEGATIVE, AT_LEAST_1 = Range(0, open_low=True), Range(0), Range(1)
FRACTION, FRACTION_BELOW_1 = Range(0, 1), Range(0, 1, open_high=True)
ANY_NUMBER = Range(-math.inf)


@dataclass
class RunConfig:
    """What every training run has: its model and data, the optimiser (AdamW with layer-wise lr decay), the
    step (batch, accumulation, clipping, mixed precision, EMA of weights), and the run's machinery (seed,
    workers, device, checkpoint cadence). Learning rates are peak rates."""

    recipe: str = ""
    model: str = ""
    model_args: dict = field(default_factory=dict)  # extra constructor arguments, e.g. {"dims": [...]}
    data: str | None = None
    val_data: str | None = None
    output: str | None = None
    batch_size: int = 64  # per process
    accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.05  # none on biases and 1-D parameters
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 1.0  # lr x layer_decay ** (depth from the top), the model's layer ids
    clip_grad: float | None = None  # max gradient norm
    drop_path: float | None = None
    hflip: float = 0.5
    amp: bool = False  # bf16 autocast (fp16 + loss scaling on GPUs without bf16)
    ema: bool = False  # keep an exponential moving average of the weights, validated beside them
    ema_decay: float = 0.9999
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # auto: cuda when available, else cpu
    save_every: int = 0  # also keep checkpoint-<period>.pt every N epochs / intervals (0: only last and best)
    save_every_steps: int = 0  # also refresh last.pt every N optimizer steps inside an epoch / interval
    tensorboard: bool = False
    fit_to_run: bool = False  # fit the recipe to this run's length and batch (apply_fits)
    given: tuple[str, ...] = ()  # the settings the user gave; fitting never changes them

    RANGES: ClassVar[dict[str, Range]] = {
        "batch_size": AT_LEAST_1, "accum_steps": AT_LEAST_1, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
        "betas": FRACTION_BELOW_1, "eps": POSITIVE, "layer_decay": Range(0, 1, open_low=True),
        "clip_grad": POSITIVE, "drop_path": FRACTION_BELOW_1, "hflip": FRACTION, "ema_decay": FRACTION_BELOW_1,
        "seed": Range(0, 2**31 - 1), "workers": NON_NEGATIVE, "save_every": NON_NEGATIVE,
        "save_every_steps": NON_NEGATIVE,
    }
    CHOICES: ClassVar[dict[str, Sequence[str]]] = {}
    # Settings a resumed run may change: each is applied as given (e.g. more epochs stretch the schedule); not
    # given, the run keeps its own value.
    FREE_ON_RESUME: ClassVar[tuple[str, ...]] = ("workers", "device", "output", "tensorboard", "save_every",
                                                 "save_every_steps", "given")
    # Of those, what describes this command rather than the run: never carried over.
    NEW_EACH_COMMAND: ClassVar[tuple[str, ...]] = ("device", "output", "given")
    # Keys of model_args that come from the run's own settings instead.
    RESERVED_MODEL_ARGS: ClassVar[tuple[str, ...]] = ("num_classes", "drop_path_rate")

    def complete(self) -> None:
        """Fill the settings whose defaults depend on others (called once, before `check`)."""

    def check_more(self) -> None:
        """Checks across settings, after each one is of its type and in its range."""

    def to_dict(self) -> dict:
        """Plain JSON-able values (tuples as lists): what run folders and checkpoints store."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[C], values: Mapping) -> C:
        """The inverse of `to_dict` (a stored run's settings): unknown keys ignored, lists made tuples where the
        field is one; values are not checked (they were when the run started)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        return cls(**{k: tuple(v) if isinstance(v, list) and _is_tuple(hints[k]) else v
                      for k, v in values.items() if k in fields})


C = TypeVar("C", bound=RunConfig)


def _is_tuple(hint) -> bool:
    return any((typing.get_origin(h) or h) is tuple for h in (hint, *typing.get_args(hint)))


def parse_value(text: str, current=None):
    """A ``--set`` value read as JSON where it parses (numbers, true/false, null, lists, objects), else as a
    string; ``yes``/``no`` for a setting that is a bool."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if isinstance(current, bool) and isinstance(value, str) and value.lower() in ("yes", "no"):
        value = value.lower() == "yes"
    return value


def resolve(cls: type[C], recipes: Mapping[str, Mapping], recipe: str, settings: Iterable[str] = (), *,
            what: str = "recipe", command_defaults: Mapping | None = None, **overrides) -> C:
    """``cls`` defaults, then ``recipes[recipe]``, then ``command_defaults`` (what a command chooses for the
    user, e.g. fitting the recipe to the run: not recorded as given), then ``"key=value"`` settings, then
    keyword ``overrides`` (None: not given); completed and checked. Every key the user set is recorded in
    ``given``."""
    if recipe not in recipes:
        raise UserError(f"unknown {what} {recipe!r}; choose from {', '.join(recipes)}")
    names = [f.name for f in dataclasses.fields(cls) if f.name != "given"]
    defaults = cls()
    values, named = {**recipes[recipe], **(command_defaults or {}), "recipe": recipe}, set()
    for item in settings:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        check_setting_name(key, item, names, sep)
        values[key] = parse_value(text, getattr(defaults, key))
        named.add(key)
    chosen = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    twice = sorted(k for k in named & set(chosen) if values[k] != chosen[k])
    if twice:  # a flag would silently win over --set: say so instead
        key = twice[0]
        raise UserError(f"{key} is given twice, as --{key.replace('_', '-')} {chosen[key]!r} and --set "
                        f"{key}={json.dumps(values[key])}: give it once")
    values.update(chosen)
    values["given"] = tuple(sorted(set(values.get("given", ())) | named | set(chosen)))
    config = cls(**values)
    config.complete()
    check(config)
    return config


def check_setting_name(key: str, item: str, names: list[str], sep: str) -> None:
    """One line for a ``--set`` item that cannot be taken: an unknown key (its closest names, else every name),
    ``recipe`` (the command's ``--recipe`` chooses it), or a key without ``=value``."""
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3)
        known = f"did you mean {', '.join(close)}?" if close else f"the settings: {', '.join(sorted(names))}"
        raise UserError(f"unknown setting {key!r} in --set {item!r} ({known})")
    if key == "recipe":
        raise UserError(f"--set {item!r}: the recipe is chosen with --recipe")
    if not sep:
        raise UserError(f"--set {item!r} has no value: write {key}=VALUE")


def check(config: RunConfig) -> None:
    """Every setting of its field's type and in its range (``RANGES``, ``CHOICES``), then the cross-setting
    checks, or one `UserError` naming the first setting that is not. Values are conformed in place (ints
    taken as floats, lists as tuples). What the ranges rule out would not fail later but silently train
    wrongly: a negative clip_grad flips the gradients, a negative min_lr makes the lr negative."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = conform(f.name, getattr(config, f.name), hints[f.name])
        setattr(config, f.name, value)
        if value is None:
            continue
        if f.name in config.RANGES:
            limits = config.RANGES[f.name]
            if not all(v in limits for v in (value if isinstance(value, tuple) else (value,))):
                raise UserError(f"setting {f.name}={shown(value)}: must be {limits}")
        if f.name in config.CHOICES and value not in config.CHOICES[f.name]:
            raise UserError(f"setting {f.name}={value!r}: choose from {', '.join(config.CHOICES[f.name])}")
    if not all(isinstance(key, str) for key in config.model_args):
        raise UserError(f"setting model_args={config.model_args!r}: keys must be argument names")
    reserved = sorted(set(config.RESERVED_MODEL_ARGS) & set(config.model_args))
    if reserved:
        raise UserError(f"setting model_args: {', '.join(reserved)} come from the run's own settings")
    config.check_more()


# The kind of training a model is for, by its name's prefix (any other name: an image classifier).
TASK_MODELS = {"upernet_": "segmentation", "maskrcnn_": "detection", "fasterrcnn_": "detection",
               "cascade_mask_rcnn_": "detection"}


def task_of_model(name: str) -> str:
    """"classification", "segmentation" or "detection": what a run of model ``name`` trains."""
    return next((kind for prefix, kind in TASK_MODELS.items() if name.startswith(prefix)), "classification")


def check_model_builds(name: str, model_args: dict, image_side: int | None = None) -> None:
    """``name`` and ``model_args`` must build, and with ``image_side`` run one image batch of that side: tried
    on the meta device, which allocates and computes nothing (shapes only)."""
    try:
        with torch.device("meta"):
            model = build_model(name, num_classes=2, **model_args)
            if image_side is not None:
                model.eval()(torch.empty(1, 3, image_side, image_side))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a builder given bad shapes fails in many ways
        lines = str(err).strip().splitlines()
        raise UserError(f"{name} cannot be built with model_args={json.dumps(model_args)}: "
                        f"{lines[0] if lines else type(err).__name__}") from None


def check_order(config: RunConfig, *names: str) -> None:
    """Pairs ``(low, high)`` given in that order."""
    for name in names:
        low, high = getattr(config, name)
        if low > high:
            raise UserError(f"setting {name}={shown(getattr(config, name))}: the smaller value comes first")


def shown(value) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple) else repr(value)


def conform(name: str, value, hint):
    """``value`` as the type ``hint`` of its field names (ints taken as floats, lists as tuples), or one error.
    A bool is never taken for a number (``epochs=true``), nor a number for a bool (``ema=1``)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    wrong = UserError(f"setting {name}={value!r}: expected {_type_text(hint)}")
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        return float(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise wrong
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            raise wrong
        return tuple(conform(name, v, kind) for v, kind in zip(value, kinds, strict=True))
    if isinstance(value, bool) != (origin is bool) or not isinstance(value, origin):
        raise wrong
    return value


def _type_text(hint) -> str:
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is tuple:
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        kind = {float: "numbers", int: "whole numbers"}.get(args[0], "texts")
        return f"a list of {count}{kind}"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text",
            dict: "a JSON object"}.get(origin, getattr(origin, "__name__", str(origin)))


# A proposed change of a setting, and why: (key, value, reason).
Fit = tuple[str, object, str]


def apply_fits(config: RunConfig, fits: Iterable[Fit] | Callable[[], Iterable[Fit]]) -> list[str]:
    """The one fitting rule of every task: with ``fit_to_run`` on, apply each proposed change to a setting
    the user did not give; returns one line per change, saying why. Proposals are taken one at a time, so a
    later one sees the earlier changes."""
    if not config.fit_to_run:
        return []
    notes = []
    kept = getattr(config, "_kept", frozenset())  # a resumed run's own values (`keep_run_settings`)
    for key, value, why in (fits() if callable(fits) else fits):
        if key in config.given or key in kept or getattr(config, key) == value:
            continue
        notes.append(f"{key} {getattr(config, key)!r} -> {value!r}: {why}")
        setattr(config, key, value)
    return notes


def keep_run_settings(saved: Mapping, config: RunConfig) -> list[str]:
    """On resume, every setting the user does not give now takes the value the stored run had in effect: its
    stored value (a recipe value fitted to the run, e.g. a warm-up derived from the epoch count, stays as the
    run started when ``--epochs`` changes), or the field's default for a setting the run predates (so a recipe
    gaining a setting still resumes the runs it started before). Fitting (`apply_fits`) then leaves those
    alone. Changes ``config``; one line per setting so kept. Settings free on resume keep the run's value too
    unless given (a rerun without ``--epochs`` or ``--data`` must not take another recipe's epochs or workers),
    except those describing the command itself (``NEW_EACH_COMMAND``)."""
    stored, fresh = type(config).from_dict(saved), type(config)()
    kept, notes = set(), []
    for item in dataclasses.fields(config):
        key = item.name
        if key in config.given or key in config.NEW_EACH_COMMAND:
            continue
        if key in saved:
            value, why = getattr(stored, key), "as this run started"
        elif key in config.FREE_ON_RESUME:
            continue
        elif getattr(fresh, key) is not None:
            value, why = getattr(fresh, key), "as when this run started (it predates the setting)"
        else:  # a default filled from other settings (`RunConfig.complete`): compared by `config_changes`
            continue
        kept.add(key)
        if getattr(config, key) != value:
            notes.append(f"{key}={json.dumps(value)}: kept {why}")
            setattr(config, key, value)
    config._kept = frozenset(kept)  # not a field: never stored, never compared
    return notes


def config_changes(saved: Mapping, current: RunConfig) -> list[str]:
    """The settings of a stored run that differ from ``current``, besides those free on resume. A setting
    the stored run predates counts as its default value, so runs of earlier versions stay resumable."""
    now = current.to_dict()
    defaults = type(current)().to_dict()
    keys = sorted(k for k in set(saved) | set(now) if k not in current.FREE_ON_RESUME)
    before = {k: saved.get(k, defaults.get(k)) for k in keys}
    return [f"{k} {before[k]!r} -> {now.get(k)!r}" for k in keys if before[k] != now.get(k)]

"""Training recipes: `TrainConfig`, the named presets in `RECIPES`, and `FIELD=VALUE` settings.

A config is everything `train.fit` needs besides the data; model files store it, so a network
says how it was trained, and `held_out` can find the validation images it never learned from.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar

import numpy as np

from .augment import AugmentConfig
from .data import Mnist, Split, split_validation, validation_order
from .device import PRECISIONS
from .errors import MnistDigitsError
from .model import ModelConfig

# What TrainConfig's numbers may hold (`--set` reaches them all): field, test, what to give.
_POSITIVE_INT = (lambda v: v >= 1, "a whole number, 1 or more")
_POSITIVE = (lambda v: v > 0, "a number above 0")
_NON_NEGATIVE = (lambda v: v >= 0, "a number, 0 or more")
_SHARE = (lambda v: 0 < v < 1, "a share between 0 and 1")
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "epochs": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "lr": _POSITIVE,
    "rho": (lambda v: 0 <= v < 1, "a decay in [0, 1)"),
    "eps": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "label_smoothing": (lambda v: 0 <= v < 1, "a share in [0, 1)"),
    "warmup": _SHARE,
    "final_div": (lambda v: v >= 1, "a ratio, 1 or more"),
    "plateau_patience": (lambda v: v >= 0, "a whole number of epochs, 0 or more"),
    "plateau_factor": _SHARE,
    "plateau_min_delta": _NON_NEGATIVE,
    "min_lr": _NON_NEGATIVE,
    "sam": _NON_NEGATIVE,
    "eval_batch_size": _POSITIVE_INT,
}


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. The defaults are the reference notebook's."""

    recipe: str = "reference"  # name of the preset this config started from
    epochs: int = 20
    batch_size: int = 64  # images per optimizer step
    optimizer: str = "rmsprop"  # "rmsprop" (the reference's) or "adamw"
    lr: float = 1e-3  # initial learning rate; with the one-cycle schedule, its peak
    rho: float = 0.9  # RMSprop's decay of the squared-gradient average (PyTorch: alpha)
    eps: float = 1e-7  # RMSprop's and AdamW's epsilon, Keras' default
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    label_smoothing: float = 0.0  # share of each target spread over the other classes
    schedule: str = "plateau"  # "plateau": cut lr when validation stalls; "onecycle": per step
    warmup: float = 0.25  # one-cycle: share of all steps spent rising to the peak lr
    final_div: float = 25_000.0  # one-cycle: the peak lr over the last step's (PyTorch's default);
    # 4 keeps the rate above a quarter of its peak, where the weight average is still moving
    precision: str = "auto"  # "bf16": autocast the training forward pass to bfloat16; "auto" (the
    # default) takes bf16 where the device computes it natively (GPUs; CPUs with AMX or AVX-512 BF16)
    # and fp32 elsewhere, where bf16 is emulated and slower; `fit` records the one it took
    plateau_patience: int = 3  # epochs without a better validation accuracy before cutting lr
    plateau_factor: float = 0.5  # lr multiplier at each cut
    plateau_min_delta: float = 1e-4  # accuracy gain that counts as better (Keras' min_delta)
    min_lr: float = 1e-5  # lr never goes below this
    ema: float = 0.0  # weight averaging: decay of a moving average of the weights (and BatchNorm
    # statistics) updated every step; the average is validated and saved instead (0: off)
    sam: float = 0.0  # sharpness-aware minimization: each step takes its gradient at weights moved
    # this far (L2 norm over all weights) uphill, which favours flat minima; twice the work a step (0: off)
    val_fraction: float = 0.1  # share of the 60,000 training images held out for validation; 0
    # trains on all of them and keeps the last epoch (a final fit, once the recipe is settled)
    seed: int = 0  # seeds weights, dropout, shuffling, augmentation and the validation split
    split_seed: int | None = None  # seeds the validation split instead (None: `seed` does); one
    # split_seed for every member of an ensemble lets the ensemble itself be validated
    eval_batch_size: int = 1000  # images per forward pass when evaluating
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        for name, (valid, what) in _RANGES.items():
            if not valid(getattr(self, name)):
                default = getattr(TrainConfig, name)
                raise MnistDigitsError(
                    f"{name} {getattr(self, name)}: give {what} (the reference uses {default})."
                )
        if self.optimizer not in ("rmsprop", "adamw"):
            raise MnistDigitsError(f"unknown optimizer {self.optimizer!r}; choose rmsprop or adamw.")
        if self.schedule not in ("plateau", "onecycle"):
            raise MnistDigitsError(f"unknown schedule {self.schedule!r}; choose plateau or onecycle.")
        if self.precision not in PRECISIONS:
            raise MnistDigitsError(f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}.")
        if not 0.0 <= self.ema < 1.0:
            raise MnistDigitsError(f"ema {self.ema}: give a decay in [0, 1), such as 0.999 (0: off).")
        if not 0.0 <= self.val_fraction < 1.0:
            raise MnistDigitsError(
                f"val_fraction {self.val_fraction}: give a share in [0, 1), such as 0.1 (0: no validation)."
            )
        if self.split_seed is not None and self.split_seed < 0:
            raise MnistDigitsError(f"split_seed {self.split_seed}: give a whole number, 0 or more.")
        if self.val_fraction == 0.0 and self.schedule == "plateau":
            raise MnistDigitsError(
                "val_fraction 0 leaves nothing to validate on, and the plateau schedule cuts the "
                "learning rate by validation accuracy; use a recipe with the one-cycle schedule "
                "(fast, lean, best, full) or keep a validation split."
            )

    @property
    def validates(self) -> bool:
        return self.val_fraction > 0.0

    @property
    def validation_seed(self) -> int:
        """The seed that chooses the validation images."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A saved config; one saved before `precision` existed trained in fp32."""
        values = {"precision": "fp32", **values}
        values["augment"] = AugmentConfig(**values["augment"])
        values["model"] = ModelConfig.from_dict(values["model"])
        return cls(**values)


# 99.5% on the test set in the least time on a 2-core CPU: a half-width network with
# BatchNorm after every convolution and no dropout (dropout's random masks cost a sixth
# of a step here, and BatchNorm regularizes enough for 5 epochs), AdamW on a one-cycle
# schedule to a high peak, batch 256, label smoothing, lighter augmentation. Chosen on
# the validation split (docs/experiments.md).
_FAST = TrainConfig(
    recipe="fast",
    epochs=5,
    batch_size=256,
    optimizer="adamw",
    lr=8e-3,
    warmup=0.15,
    weight_decay=5e-4,
    label_smoothing=0.1,
    schedule="onecycle",
    augment=AugmentConfig(rotation=8.0, zoom=0.06, shift=0.06),
    model=ModelConfig(
        channels=(16, 32, 64), dropout_first=0.0, dropout=0.0, conv_batchnorm=True, bn_momentum=0.1
    ),
)

# Weight averaging for the long recipes: it raised both recipes' validation accuracy with the
# raw weights trained exactly as before (docs/experiments.md, "Weight averaging").
_EMA = 0.999

# The most accurate single network on MNIST: `lean` at three quarters of the reference width
# (24-48-96 channels), half its batch (twice the steps at the same peak rate) and sharpness-aware
# steps, each chosen on validation (docs/experiments.md).
_BEST = replace(
    _FAST,
    recipe="best",
    epochs=30,
    batch_size=128,
    augment=AugmentConfig(),
    ema=_EMA,
    sam=0.05,
    model=replace(_FAST.model, channels=(24, 48, 96)),
)

RECIPES: dict[str, TrainConfig] = {
    # The Keras notebook's recipe, exactly.
    "reference": TrainConfig(),
    "fast": _FAST,
    # The fast recipe's network trained six times longer with the reference augmentation,
    # validating and saving a moving average of its weights: as accurate as `full` on the
    # validation split in 40% of its time; its members are a cheap way to grow an ensemble.
    "lean": replace(_FAST, recipe="lean", epochs=30, augment=AugmentConfig(), ema=_EMA),
    "best": _BEST,
    # `best` taught the pens MNIST lacks: a third of its images get strokes up to 3 px wider (a
    # marker), a third up to 1 px narrower (a fine pen). Of the styles of `augment.py` these
    # helped the stress rows and the UCI digits on validation; the scanner's and the hand's
    # (blur, low resolution, binarization, aliasing, slant, gaps, contrast, gamma, specks) did not
    # add to them (docs/experiments.md, "Styles MNIST lacks").
    "robust": replace(
        _BEST,
        recipe="robust",
        augment=AugmentConfig(thicken=0.3, thicken_px=3.0, thin=0.3, thin_px=1.0),
    ),
    # The reference width with BatchNorm after every convolution, the reference
    # augmentation, label smoothing, AdamW on a one-cycle schedule (`best` until `lean`'s
    # wider network overtook it; two of the shipped ensemble's networks).
    "full": TrainConfig(
        recipe="full",
        epochs=20,
        batch_size=128,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=5e-4,
        label_smoothing=0.1,
        schedule="onecycle",
        model=ModelConfig(conv_batchnorm=True, bn_momentum=0.1),
    ),
}


def complete_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the fields added since it was written, at their defaults (precision at
    fp32, which every run made before that field trained in)."""
    try:
        return TrainConfig.from_dict(saved).to_dict()
    except (KeyError, TypeError, MnistDigitsError):
        return saved  # not a config this version can read: compared as it is, and refused


class MixedSplits(MnistDigitsError):
    """An ensemble whose members held out different validation images."""


def held_out(networks: Sequence[dict[str, Any]], data: Mnist) -> Split:
    """The validation images that the networks (a model's, or an ensemble's members' metadata)
    held out of `data`'s training images, as `fit` chose them; MnistDigitsError if they trained
    on other images or held out different ones, so no image they learned from is validated on."""
    splits = _validation_splits(networks, data)
    if len(set(splits)) > 1:
        raise MixedSplits(
            f"the networks of this ensemble held out different validation images (split seeds "
            f"{_seeds(splits)}), so each trained on images the others validate on. Train the members "
            "with one split_seed to validate the ensemble."
        )
    return split_validation(data.train, *splits[0])[1]


def held_out_by_all(networks: Sequence[dict[str, Any]], data: Mnist) -> tuple[Split, str]:
    """The training images that every network held out (none of them learned from these), in
    `data`'s order, and which splits they are: `held_out`'s images, in another order, when the
    networks share one.

    An ensemble whose members held out different 10% splits still has about 1% of the images
    that none of them saw: few, but its own honest validation digits.
    """
    splits = sorted(set(_validation_splits(networks, data)), key=lambda s: s[1])
    common = np.ones(len(data.train.labels), dtype=bool)
    for fraction, seed in splits:
        held = np.zeros_like(common)
        held[validation_order(len(common), fraction, seed)[0]] = True
        common &= held
    fractions = ", ".join(sorted({f"{fraction:g}" for fraction, _ in splits}))
    which = f"val_fraction {fractions}, split seed{'s' if len(splits) > 1 else ''} {_seeds(splits)}"
    if len(splits) > 1:
        which = f"the digits all {len(networks)} networks held out: {which}"
    return Split(data.train.images[common], data.train.labels[common]), which


def _seeds(splits: Sequence[tuple[float, int]]) -> str:
    return ", ".join(str(seed) for seed in sorted({seed for _, seed in splits}))


def _validation_splits(networks: Sequence[dict[str, Any]], data: Mnist) -> list[tuple[float, int]]:
    """Each network's (val_fraction, split seed); MnistDigitsError if one held out none, trained on
    other images, or does not say."""
    splits = []
    for i, metadata in enumerate(networks):
        which = f"network {i + 1} of {len(networks)}" if len(networks) > 1 else "this network"
        try:
            config = TrainConfig.from_dict(metadata["train_config"])
        except (KeyError, TypeError) as e:
            raise MnistDigitsError(
                f"{which} does not record its training settings ({e}), so its validation images are unknown."
            ) from None
        if not config.validates:
            raise MnistDigitsError(
                f"{which} trained on all {len(data.train.labels):,} training images (val_fraction 0): "
                "it held out no validation split. Evaluate it on the test set instead."
            )
        images = metadata.get("train_images", len(data.train.labels))  # not in files before 2026-11-29
        if metadata.get("data_sha256") != data.sha256 or images != len(data.train.labels):
            raise MnistDigitsError(
                f"{which} trained on other images than these {len(data.train.labels):,} (its own "
                "data, Kaggle's train.csv, samples from `feedback export`, or a --dry-run), so its "
                "validation images are not among them."
            )
        splits.append((config.val_fraction, config.validation_seed))
    return splits


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """A named preset with some fields replaced (None values are ignored)."""
    if name not in RECIPES:
        raise MnistDigitsError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


class SettingError(MnistDigitsError):
    """A FIELD=VALUE setting that names no field, or gives a value the field cannot hold."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting, self.problem = setting, problem
        super().__init__(f"setting {setting!r}: {problem}")


Config = TypeVar("Config")  # a dataclass of settings: TrainConfig, or another (PreprocessConfig)


def with_settings(config: Config, settings: Sequence[str]) -> Config:
    """The config with fields changed by 'FIELD=VALUE' strings, dotted into the augmentation
    and the network: 'label_smoothing=0.05', 'augment.rotation=10', 'model.channels=32,64,128'.
    Each value is read as its field's declared type; SettingError says what could not be. Any
    dataclass of settings takes them the same way."""
    for setting in settings:
        name, equals, text = setting.partition("=")
        if not equals or not name.strip():
            raise SettingError(setting, "write FIELD=VALUE, such as augment.rotation=10.")
        config = _with_field(config, name.strip().split("."), text.strip(), setting)
    return config


def _with_field(settings: Any, path: list[str], text: str, setting: str) -> Any:
    names = [f.name for f in fields(settings) if f.name != "recipe"]  # the preset's name stays
    if path[0] not in names:
        raise SettingError(
            setting, f"there is no setting {path[0]!r} here; choose one of {', '.join(names)}."
        )
    current = getattr(settings, path[0])
    if is_dataclass(current):
        if len(path) == 1:
            inner = ", ".join(f"{path[0]}.{f.name}" for f in fields(current))
            raise SettingError(setting, f"{path[0]} is a group of settings; name one: {inner}.")
        return replace(settings, **{path[0]: _with_field(current, path[1:], text, setting)})
    if len(path) > 1:
        raise SettingError(setting, f"{path[0]} is a single setting, with nothing inside it.")
    hint = typing.get_type_hints(type(settings))[path[0]]
    try:
        value = _parse(hint, text)
    except ValueError:
        raise SettingError(
            setting, f"{text!r} is not a value of this setting; {_expected(hint, current)}."
        ) from None
    return replace(settings, **{path[0]: value})


def _parse(hint: Any, text: str) -> Any:
    """`text` read as a value of the type `hint` (bool, int, float, str, a tuple of them, or X | None);
    ValueError if it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(inner, text)
    if origin is tuple:
        parts = [part.strip() for part in text.split(",")]
        kinds = [args[0]] * len(parts) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(parts):
            raise ValueError(text)
        return tuple(_parse(kind, part) for kind, part in zip(kinds, parts, strict=True))
    if hint is bool:
        choices = {"true": True, "1": True, "false": False, "0": False}
        if text.lower() not in choices:
            raise ValueError(text)
        return choices[text.lower()]
    if hint in (int, float, str):
        return hint(text)
    raise TypeError(f"settings of type {hint} cannot be read from text")


def _expected(hint: Any, current: Any) -> str:
    """What to give instead, in words."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and int in typing.get_args(hint):
        return "give a whole number, or none"
    example = ",".join(str(v) for v in current) if isinstance(current, tuple) else str(current)
    return f"give one like its current value, {example}"


__all__ = [
    "RECIPES",
    "MixedSplits",
    "SettingError",
    "TrainConfig",
    "complete_saved",
    "held_out",
    "held_out_by_all",
    "recipe",
    "with_settings",
]

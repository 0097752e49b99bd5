"""What every field of a model file's metadata must be, checked before anything is built from it.

Each check returns what is wrong with a value, or "" when it is fine. Fields not named here are
kept as they are (a newer version's additions, or notes of one's own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from .errors import MnistDigitsError
from .model import ModelConfig, is_whole, shown

WEIGHTS_DTYPES = ("float32", "float16", "int8")  # how an ensemble file may store its weights
MAX_MEMBERS = 1000  # networks in one ensemble file; the shipped one has 10


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: object) -> str:
    return "" if is_whole(value) and value >= 0 else "not a whole number of 0 or more"


def _accuracy(value: object) -> str:
    ok = value is None or (_number(value) and 0.0 <= value <= 1.0)
    return "" if ok else "not a fraction from 0 to 1"


def _real(value: object) -> str:
    return "" if value is None or _number(value) else "not a number"


def _seconds(value: object) -> str:
    return "" if value is None or (_number(value) and value >= 0) else "not a number of seconds"


def _text(value: object) -> str:
    return "" if isinstance(value, str) else "not a string"


def _object(value: object) -> str:
    return "" if isinstance(value, dict) else "not a JSON object"


def _object_or_null(value: object) -> str:
    return "" if value is None or isinstance(value, dict) else "not a JSON object"


def _strings(value: object) -> str:
    ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    return "" if ok else "not an object of strings"


def _strings_or_null(value: object) -> str:
    return "" if value is None else _strings(value)


def _list_of_objects(value: object) -> str:
    ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
    return "" if ok else "not a list of JSON objects"


def _members(value: object) -> str:
    if not isinstance(value, list) or _list_of_objects(value):
        return "not a list of networks' metadata"
    return f"{len(value):,} networks, over the limit of {MAX_MEMBERS:,}" if len(value) > MAX_MEMBERS else ""


def _weights_dtype(value: object) -> str:
    return "" if value in WEIGHTS_DTYPES else f"not one of {', '.join(WEIGHTS_DTYPES)}"


def _model_config(value: object) -> str:
    try:
        ModelConfig.from_dict(value)
    except MnistDigitsError as e:
        return str(e).rstrip(".")
    return ""


# An epoch of the training history: the fields the curves and the report read, then two that
# older files may lack.
_EPOCH: dict[str, Callable[[object], str]] = {
    "epoch": _count,
    "train_loss": _real,
    "train_accuracy": _accuracy,
    "val_loss": _real,
    "val_accuracy": _accuracy,
    "lr": _real,
    "seconds": _seconds,
    "images_per_second": _real,
}
_EPOCH_OPTIONAL = frozenset({"seconds", "images_per_second"})


def _history(value: object) -> str:
    if not isinstance(value, list) or _list_of_objects(value):
        return "not a list of epochs"
    for i, epoch in enumerate(value):
        for name, check in _EPOCH.items():
            if name not in epoch:
                if name not in _EPOCH_OPTIONAL:
                    return f"epoch {i + 1} lacks {name}"
            elif problem := check(epoch[name]):
                return f"epoch {i + 1}'s {name} {shown(epoch[name])} is {problem}"
    return ""


def _train_config(value: object) -> str:
    if not isinstance(value, dict):
        return "not a JSON object"
    for name, check in (("recipe", _text), ("seed", _count), ("model", _object), ("augment", _object)):
        if name in value and (problem := check(value[name])):
            return f"{name} {shown(value[name])}: {problem}"
    if "model" in value:
        return _model_config(value["model"])
    return ""


FIELDS: dict[str, Callable[[object], str]] = {
    "model_config": _model_config,
    "members": _members,
    "weights_dtype": _weights_dtype,
    "train_config": _train_config,
    "history": _history,
    "test_accuracy": _accuracy,
    "val_accuracy": _accuracy,
    "test_loss": _real,
    "val_loss": _real,
    "train_seconds": _seconds,
    "epoch": _count,
    "train_images": _count,
    "torch_threads": _count,
    "device": _text,
    "environment": _strings,
    "data_sha256": _strings_or_null,
    # a training checkpoint's (resume.py reads them)
    "data_identity": _object,
    "optimizer_param_groups": _list_of_objects,
    "scheduler": _object,
    "epoch_in_progress": _object_or_null,
}


_NESTED = ("model_config", "members", "train_config", "history")  # their problems name the inner field


def metadata_problem(metadata: dict[str, Any], where: str = "") -> str:
    """What is wrong with a file's metadata, in words, or "" when every field is what it should be;
    an ensemble's members are checked field by field too."""
    for name, check in FIELDS.items():
        if name in metadata:
            problem = check(metadata[name])
            if problem and name in _NESTED:
                return f"its {where}{name} is wrong: {problem}"
            if problem:
                return f"its {where}{name} {shown(metadata[name])} is {problem}"
    for i, member in enumerate(metadata.get("members") or []):
        if "members" in member:
            return f"its members[{i}] is an ensemble itself"
        problem = metadata_problem(member, f"members[{i}].")
        if problem:
            return problem
    return ""

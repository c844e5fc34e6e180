"""Checkpoints: what ``--resume`` needs to continue a run bit for bit, saved atomically, loaded safely.

A checkpoint is a ``torch.save`` of plain data only: tensors, numbers, strings, lists, tuples and dicts
(config, scene summary, training cameras, octree leaves, parameters, optimiser state, step, history). It
is loaded with ``torch.load(..., weights_only=True)``, whose unpickler builds nothing else, so a file a
stranger sent cannot run code; anything else in it is refused. Then every field the trainer and the
renderer read is checked for presence and type, and a bad one is named in a one-line ``TvqError``.

A checkpoint is for continuing training. The file to share is the ``.tvq`` a run writes beside it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from pathlib import Path

import torch

from .atomic import atomic_write
from .errors import TvqError

FORMAT = "tvq-checkpoint"
VERSION = 1


def save(obj: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def load(path: Path) -> dict:
    """Read and validate a checkpoint; any problem is a one-line ``TvqError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TvqError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # The weights-only unpickler met a global it does not build (a class, a function): refuse the file.
        raise TvqError(f"{path}: refused: the checkpoint holds pickled objects other than tensors and plain data, "
                       "which could run code (tvq never writes such a file)") from None
    except Exception as err:
        raise TvqError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TvqError(f"{path}: not a tvq checkpoint")
    if ckpt.get("version") != VERSION:
        raise TvqError(f"{path}: checkpoint version {ckpt.get('version')!r} is not supported (this tvq reads {VERSION})")
    validate(ckpt, path)
    return ckpt


# ---- validation ------------------------------------------------------------------------------------

_NUMBER = (int, float)


def _is_number(v) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tensor(shape=None, dtypes=None):
    """A check for a tensor with ``shape`` (None entries: any size) and one of ``dtypes``."""

    def check(v) -> str | None:
        if not isinstance(v, torch.Tensor):
            return "a tensor"
        if shape is not None and (v.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, v.shape))):
            return f"a tensor of shape ({', '.join('N' if s is None else str(s) for s in shape)})"
        if dtypes is not None and v.dtype not in dtypes:
            return f"a tensor of dtype {' or '.join(str(d).replace('torch.', '') for d in dtypes)}"
        return None

    return check


def _kind(test, what: str):
    return lambda v: None if test(v) else what


_FLOATS = (torch.float16, torch.float32, torch.float64, torch.bfloat16)

# field -> check (None when fine, else what the field should be)
_TOP = {
    "config": _kind(lambda v: isinstance(v, dict), "a dict"),
    "scene": _kind(lambda v: isinstance(v, dict), "a dict"),
    "cameras": _kind(lambda v: isinstance(v, dict), "a dict"),
    "octree": _kind(lambda v: isinstance(v, dict), "a dict"),
    "field": _kind(lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                         for k, t in v.items()), "a dict of named tensors"),
    "grid_kind": _kind(lambda v: v in ("raw", "vq", "hash"), "one of raw, vq, hash"),
    "optimizer": _kind(lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                       and isinstance(v.get("param_groups"), list), "an optimiser state dict"),
    "device_type": _kind(lambda v: v in ("cpu", "cuda"), "cpu or cuda"),
    "step": _kind(lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "elapsed": _kind(lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "history": _kind(lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v), "a list of dicts"),
}
_NESTED = {
    "scene": {"background": _kind(lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_is_number, v)),
                                  "three numbers")},
    "cameras": {
        "K": _tensor((3, 3), _FLOATS),
        "width": _kind(lambda v: _is_int(v) and v > 0, "a positive integer"),
        "height": _kind(lambda v: _is_int(v) and v > 0, "a positive integer"),
        "c2ws": _tensor((None, 4, 4), _FLOATS),
    },
    "octree": {
        "max_level": _kind(lambda v: _is_int(v) and 0 <= v <= 20, "an integer in 0..20"),
        "center": _kind(lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_is_number, v)),
                        "three numbers"),
        "scale": _kind(lambda v: _is_number(v) and v > 0, "a positive number"),
        "leaf_codes": _tensor((None,), (torch.int64,)),
    },
}


# Options newer than the checkpoint format, with the value a checkpoint written before them trained with
# (filled in on load, whatever today's default is).
ADDED_LATER = {"decoder_hidden": 128, "lazy_rows": False, "density": "relu", "adam_beta2": 0.999,
               "random_background": False, "lr_decay": 1.0, "subdivide_at": None, "lod_ratio": 2.0,
               "vq_logit_gap": 2.0, "vq_freeze": 1.0}


def _config_checks() -> dict:
    """A check per ``TrainConfig`` field, from its annotation."""
    from .train import TrainConfig

    by_annotation = {
        "int": _kind(_is_int, "an integer"),
        "bool": _kind(lambda v: isinstance(v, bool), "true or false"),
        "float": _kind(_is_number, "a number"),
        "str": _kind(lambda v: isinstance(v, str), "a string"),
        "float | None": _kind(lambda v: v is None or _is_number(v), "a number or null"),
        "int | None": _kind(lambda v: v is None or _is_int(v), "an integer or null"),
        "tuple[int, ...] | None": _kind(lambda v: v is None or (isinstance(v, (list, tuple)) and all(map(_is_int, v))),
                                        "a list of integers or null"),
    }
    return {f.name: by_annotation[str(f.type)] for f in dataclasses.fields(TrainConfig)}


def validate(ckpt: dict, path: Path) -> None:
    """Every field the trainer and renderer read is present with the right type, else one line naming it."""

    def bad(name: str, what: str):
        raise TvqError(f"{path}: checkpoint field '{name}' should be {what}")

    if "pruning" in ckpt and not (isinstance(ckpt["pruning"], list) and all(isinstance(e, dict) for e in ckpt["pruning"])):
        bad("pruning", "a list of dicts")  # (newer than the format: optional)
    for name, check in _TOP.items():
        if name not in ckpt:
            raise TvqError(f"{path}: checkpoint field '{name}' is missing")
        problem = check(ckpt[name])
        if problem:
            bad(name, problem)
    for group, checks in _NESTED.items():
        for name, check in checks.items():
            if name not in ckpt[group]:
                raise TvqError(f"{path}: checkpoint field '{group}.{name}' is missing")
            problem = check(ckpt[group][name])
            if problem:
                bad(f"{group}.{name}", problem)
    octree = ckpt["octree"]
    codes = octree["leaf_codes"]
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 8 ** octree["max_level"]):
        bad("octree.leaf_codes", f"cell codes of level {octree['max_level']} (0..8^{octree['max_level']}-1)")
    checks = _config_checks()
    for name, value in ckpt["config"].items():
        if name not in checks:
            raise TvqError(f"{path}: checkpoint field 'config.{name}' is not an option this tvq knows")
        problem = checks[name](value)
        if problem:
            bad(f"config.{name}", problem)
    for name in checks:
        if name not in ckpt["config"]:
            if name not in ADDED_LATER:
                raise TvqError(f"{path}: checkpoint field 'config.{name}' is missing")
            ckpt["config"][name] = ADDED_LATER[name]

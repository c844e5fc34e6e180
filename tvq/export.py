"""Between checkpoints, trained fields and .tvq files: write a run's model file, open either kind.

``export_checkpoint`` writes the .tvq of a checkpoint (``tvq export``); ``open_model`` gives what the
renderers need (field, background, cameras) from a .tvq (any prefix of it, ``max_bytes``) or a checkpoint,
so ``tvq render``, ``tvq eval`` and the viewer take either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import codec, runtime
from .errors import TvqError


@dataclass
class OpenedModel:
    field: object  # RadianceField, in eval mode, on the runtime's device
    background: torch.Tensor  # (3,) on the device
    cameras: dict | None  # {"K": (3, 3) float64, "width", "height", "c2ws": (N, 4, 4) float64}
    lods: int  # LODs available (a prefix of a .tvq may hold fewer than the model has)
    num_lods: int  # LODs of the whole model
    source: str  # "tvq" or "checkpoint"
    bytes_used: int | None  # bytes of the .tvq that hold those LODs
    header: dict | None
    note: str = ""  # where a cut file stopped


def checkpoint_cameras(ckpt: dict) -> dict:
    cams = ckpt["cameras"]
    return codec.camera_header(cams["K"], cams["width"], cams["height"], cams["c2ws"])


def write_field(path: Path, field, background, cameras: dict | None, entropy: bool = True, info: dict | None = None,
                **kwargs) -> dict:
    """Write ``field`` as a .tvq; returns the size report (bytes per component, per level, per LOD)."""
    with torch.no_grad():
        return codec.write(path, field, background=background, cameras=cameras, entropy=entropy, extra=info, **kwargs)


def export_checkpoint(checkpoint: Path, out: Path, entropy: bool = True, mlp: str = "int8") -> dict:
    """The .tvq of a checkpoint's trained field (a VQ run still in its raw warm start exports raw)."""
    from .train import field_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    field = field_from_checkpoint(ckpt, torch.device("cpu"), checkpoint)
    return write_field(out, field, ckpt["scene"]["background"], checkpoint_cameras(ckpt), entropy=entropy,
                       info={"steps": ckpt["step"], "train_seconds": ckpt["elapsed"]}, mlp=mlp)


def _camera_tensors(cams: dict | None) -> dict | None:
    if cams is None:
        return None
    return {"K": torch.tensor(cams["K"], dtype=torch.float64), "width": cams["width"], "height": cams["height"],
            "c2ws": torch.tensor(cams["poses"], dtype=torch.float64)}


def open_model(path: Path, max_bytes: int | None = None, arch: str | None = None) -> OpenedModel:
    """A .tvq (or its first ``max_bytes``) or a checkpoint, ready to render on the runtime's device."""
    path = Path(path)
    if not path.is_file():
        raise TvqError(f"{path}: no such file")
    if codec.is_tvq(path):
        runtime.init(arch)
        device = runtime.device()
        decoded = codec.read(path, max_bytes=max_bytes, device=device)
        field = decoded.field
        header = decoded.header
        return OpenedModel(field, torch.tensor(header["background"], dtype=torch.float32, device=device),
                           _camera_tensors(header.get("cameras")), decoded.lods, header["model"]["num_lods"], "tvq",
                           decoded.bytes_used, header, decoded.truncation)
    if max_bytes is not None:
        raise TvqError(f"{path}: --bytes reads a prefix of a .tvq file, not of a checkpoint")
    from .train import field_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(path)
    runtime.init(arch)
    device = runtime.device()
    field = field_from_checkpoint(ckpt, device, path).eval()
    cams = ckpt["cameras"]
    cameras = {"K": cams["K"].double(), "width": cams["width"], "height": cams["height"], "c2ws": cams["c2ws"].double()}
    return OpenedModel(field, torch.tensor(ckpt["scene"]["background"], dtype=torch.float32, device=device), cameras,
                       field.num_lods, field.num_lods, "checkpoint", None, None)

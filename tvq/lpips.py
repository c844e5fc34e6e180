"""LPIPS (Zhang et al. 2018, AlexNet variant, v0.1) in plain torch, from weight files the user provides.

The score is the one the ``lpips`` package gives with ``net="alex"``: images scaled to [-1, 1] and
shifted/scaled per channel, AlexNet's relu1..relu5 activations unit-normalised over channels, their
squared difference weighted per channel by a learned 1x1 layer, averaged over pixels and summed over
the five taps. Lower is better; identical images score 0.

tvq never downloads anything, so the two weight files have to be placed by the user, either in one
folder (``tvq eval --lpips-weights DIR``) or in the torch hub cache (``torch.hub.get_dir()/checkpoints``,
usually ``~/.cache/torch/hub/checkpoints``):

- ``alexnet-owt-7be5be79.pth``: torchvision's ImageNet AlexNet
  (https://download.pytorch.org/models/alexnet-owt-7be5be79.pth; torchvision puts it in the hub cache
  the first time ``torchvision.models.alexnet(weights="IMAGENET1K_V1")`` runs). Only its
  ``features.*`` tensors are used.
- ``alex.pth``: the LPIPS v0.1 linear layers, shipped inside the ``lpips`` package as
  ``lpips/weights/v0.1/alex.pth`` (also in https://github.com/richzhang/PerceptualSimilarity under
  ``lpips/weights/v0.1/``).

Both are read with ``torch.load(..., weights_only=True)``: tensors only, never arbitrary pickles.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .errors import TvqError

BACKBONE_FILE = "alexnet-owt-7be5be79.pth"
LINEAR_FILE = "alex.pth"
CHANNELS = (64, 192, 384, 256, 256)  # relu1 .. relu5
TAPS = (1, 4, 7, 9, 11)  # index in ``features`` of the ReLU after which each tap is taken
CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1), 8: (384, 256, 3, 1, 1),
         10: (256, 256, 3, 1, 1)}  # torchvision's index: (in, out, kernel, stride, padding)
SHIFT = (-0.030, -0.088, -0.188)  # the lpips ScalingLayer
SCALE = (0.458, 0.448, 0.450)
MIN_SIZE = 31  # smaller images vanish in AlexNet's second max-pool
EPS = 1e-10  # the lpips package's normalize_tensor


def hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(path: str | Path | None = None) -> tuple[Path, Path] | None:
    """(backbone, linear) weight files, each looked for in ``path`` first, then in the torch hub cache;
    None when either is in neither place. A ``path`` that is not a folder is an error."""
    places = []
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise TvqError(f"--lpips-weights {path}: no such folder")
        places.append(folder)
    places.append(hub_checkpoints())
    found = []
    for name in (BACKBONE_FILE, LINEAR_FILE):
        hit = next((p / name for p in places if (p / name).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TvqError(f"{path}: not a readable weights file ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise TvqError(f"{path}: not a state dict of tensors")
    return state


def _take(state: dict, key: str, shape: tuple, path: Path) -> torch.Tensor:
    t = state.get(key)
    if not isinstance(t, torch.Tensor):
        raise TvqError(f"{path}: tensor {key!r} is missing (is this the right file?)")
    if tuple(t.shape) != shape:
        raise TvqError(f"{path}: tensor {key!r} has shape {tuple(t.shape)}, LPIPS needs {shape}")
    return t.float()


class LPIPS(nn.Module):
    """LPIPS distance of two (H, W, 3) images in [0, 1]; ``weights`` is what ``find_weights`` returns."""

    def __init__(self, weights: tuple[Path, Path]):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(12):  # torchvision's alexnet().features up to relu5 (its last max-pool is never used)
            if i in CONVS:
                c_in, c_out, k, s, p = CONVS[i]
                layers.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
            elif i in (2, 5):
                layers.append(nn.MaxPool2d(3, 2))
            else:
                layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self._load(*weights)
        self.eval().requires_grad_(False)

    def _load(self, backbone: Path, linear: Path) -> None:
        state = _load(backbone)
        with torch.no_grad():
            for i, (c_in, c_out, k, _, _) in CONVS.items():
                conv = self.features[i]
                conv.weight.copy_(_take(state, f"features.{i}.weight", (c_out, c_in, k, k), backbone))
                conv.bias.copy_(_take(state, f"features.{i}.bias", (c_out,), backbone))
            state = _load(linear)
            for i, c in enumerate(CHANNELS):
                self.lins[i].weight.copy_(_take(state, f"lin{i}.model.1.weight", (1, c, 1, 1), linear))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + EPS))
        return out

    @torch.no_grad()
    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> float:
        for img in (img0, img1):
            if img.dim() != 3 or img.shape[2] != 3:
                raise TvqError(f"LPIPS takes (H, W, 3) images, got shape {tuple(img.shape)}")
        if img0.shape != img1.shape:
            raise TvqError(f"LPIPS compares images of one size, got {tuple(img0.shape)} and {tuple(img1.shape)}")
        if min(img0.shape[:2]) < MIN_SIZE:
            raise TvqError(f"LPIPS needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got "
                           f"{img0.shape[1]}x{img0.shape[0]}")
        device = self.shift.device

        def prepare(img: torch.Tensor) -> torch.Tensor:
            x = img.to(device, torch.float32).permute(2, 0, 1)[None] * 2 - 1
            return (x - self.shift) / self.scale

        total = 0.0
        for lin, a, b in zip(self.lins, self._taps(prepare(img0)), self._taps(prepare(img1))):
            total += float(lin((a - b) ** 2).mean())
        return total

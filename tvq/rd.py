"""Rate-distortion evaluation: quality of every LOD prefix of model files against their bytes (``tvq eval``).

Every LOD of a .tvq is complete at a known byte offset (its header's ``lods``), so its prefixes are the
points of its rate-distortion curve: each prefix is opened as a reader would get it
(``open_model(file, max_bytes=end)``) and every view of a split is rendered with the field at that LOD.
A checkpoint has no byte size; it contributes its full model at each LOD with ``bytes`` empty.

Writes ``rd.csv`` and ``rd.json`` (one row per file and LOD) and ``rd.png`` (bytes, log scale, against
PSNR; one line per file, reference points of other methods as stars).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, codec, runtime
from .atomic import atomic_write, write_json
from .errors import TvqError

COLUMNS = ("file", "name", "lod", "level", "bytes", "psnr", "ssim", "lpips")
MISSING = "n/a"


def parse_ref(text: str) -> dict:
    """A reference point ``NAME:BYTES:PSNR`` (another method's published size and quality)."""
    parts = text.rsplit(":", 2)
    bad = f"--ref {text!r} must be NAME:BYTES:PSNR (e.g. 'jpeg:250000:31.2')"
    if len(parts) != 3 or not parts[0]:
        raise TvqError(bad)
    try:
        size, quality = float(parts[1]), float(parts[2])
    except ValueError:
        raise TvqError(bad) from None
    if not (math.isfinite(size) and size > 0):
        raise TvqError(f"--ref {text!r}: BYTES must be a positive number")
    if not math.isfinite(quality):
        raise TvqError(f"--ref {text!r}: PSNR must be a finite number")
    return {"name": parts[0], "bytes": size, "psnr": quality}


def display_name(path: Path) -> str:
    """The file's stem, or its folder's name for a run's generic ``model.tvq``."""
    path = Path(path)
    return path.parent.resolve().name if path.stem == "model" else path.stem


def _file_kind(path: Path) -> str:
    """"tvq" or "checkpoint", checked before any rendering starts."""
    if not path.is_file():
        raise TvqError(f"{path}: no such file")
    if codec.is_tvq(path):
        codec.inspect(path)  # header and chunk table: a damaged file fails here, not halfway through
        return "tvq"
    try:
        checkpoint.load(path)
    except TvqError as err:
        why = str(err).removeprefix(f"{path}: ")
        raise TvqError(f"{path}: neither a .tvq file nor a tvq checkpoint ({why})") from None
    return "checkpoint"


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({runtime.ensure().arch})"


def _lpips_model(weights: str | None, views: list, device, log):
    """The LPIPS module, or None (with one log line saying why) when it cannot be computed."""
    from . import lpips

    found = lpips.find_weights(weights)
    if found is None:
        where = f"{weights} or {lpips.hub_checkpoints()}" if weights else str(lpips.hub_checkpoints())
        if weights is not None:
            raise TvqError(f"--lpips-weights: {lpips.BACKBONE_FILE} and {lpips.LINEAR_FILE} not both found in "
                           f"{where}")
        log(f"LPIPS: weights not found, so the lpips column reads {MISSING}; to compute it, pass --lpips-weights "
            f"DIR holding {lpips.BACKBONE_FILE} and {lpips.LINEAR_FILE}, or put them in {where} (see tvq/lpips.py)")
        return None
    small = min(min(v.width, v.height) for v in views)
    if small < lpips.MIN_SIZE:
        log(f"LPIPS: the views are {small} pixels across, AlexNet needs at least {lpips.MIN_SIZE}; the lpips "
            f"column reads {MISSING}")
        return None
    return lpips.LPIPS(found).to(device)


def _lpips_score(metric, field, views, lod: int, background) -> float:
    from .eval import fast_renderer

    renderer = fast_renderer(field, background)  # as tvq.eval.evaluate renders
    scores = []
    with torch.no_grad():
        for view in views:
            out = renderer.render(view.K, view.c2w, view.width, view.height, lod)
            scores.append(metric(out["color"], torch.from_numpy(view.image)))
    return float(np.mean(scores))


def _points(path: Path, kind: str, arch: str | None):
    """(model, lod, level, bytes) for every LOD prefix of a .tvq, or every LOD of a checkpoint's model."""
    from .export import open_model

    if kind == "checkpoint":
        model = open_model(path, arch=arch)
        for lod, level in enumerate(model.field.grid.levels):
            yield model, lod, int(level), None
        return
    for entry in codec.inspect(path)["lods"]:
        model = open_model(path, max_bytes=entry["end"], arch=arch)
        if model.lods != entry["lod"] + 1 or model.bytes_used != entry["end"]:
            raise TvqError(f"{path}: the header says LOD {entry['lod']} is complete at byte {entry['end']}, but "
                           f"those bytes hold {model.lods} LODs (ending at byte {model.bytes_used})")
        yield model, entry["lod"], int(entry["level"]), int(entry["end"])


def evaluate_files(files: list[Path], scene_path: Path, out_dir: Path, refs: list[str] = (),
                   lpips_weights: str | None = None, split: str = "test", max_views: int | None = None,
                   arch: str | None = None, log=print) -> dict:
    """Evaluate every LOD prefix of every file on ``split`` of the scene; writes rd.csv, rd.json and rd.png
    into ``out_dir`` and returns what rd.json holds (``rows``: one per file and LOD)."""
    from .data import load_scene
    from .eval import evaluate

    files = [Path(f) for f in files]
    if not files:
        raise TvqError("no model files to evaluate")
    references = [parse_ref(r) for r in refs]
    if max_views is not None and (isinstance(max_views, bool) or not isinstance(max_views, int) or max_views < 1):
        raise TvqError(f"--max-views must be a positive integer, got {max_views!r}")
    scene_path = Path(scene_path)
    if not scene_path.exists():
        raise TvqError(f"--scene {scene_path}: no such scene folder")
    kinds = [_file_kind(f) for f in files]
    scene = load_scene(scene_path)
    views = scene.split(split)[:max_views]
    if not views:
        raise TvqError(f"{scene_path}: the {split!r} split has no views")
    runtime.init(arch)
    device = runtime.device()
    metric = _lpips_model(lpips_weights, views, device, log)
    log(f"{scene_path}: {len(views)} {split} views of {views[0].width}x{views[0].height}, {len(files)} file(s)")

    rows = []
    for path, kind in zip(files, kinds):
        name = display_name(path)
        checked = False
        for model, lod, level, size in _points(path, kind, arch):
            if not checked and not torch.allclose(model.background.cpu(), torch.as_tensor(scene.background).float()):
                log(f"{name}: warning: trained on background {model.background.tolist()}, the scene's images are "
                    f"composited on {np.asarray(scene.background).tolist()}")
            checked = True
            result = evaluate(model.field, views, model.background, lods=[lod])[0]
            score = None if metric is None else _lpips_score(metric, model.field, views, lod, model.background)
            rows.append({"file": str(path), "name": name, "lod": lod, "level": level, "bytes": size,
                         "psnr": result["psnr"], "ssim": result["ssim"], "lpips": score})
            shown = "no size (checkpoint)" if size is None else f"{size} bytes"
            extra = "" if score is None else f", LPIPS {score:.4f}"
            log(f"{name} LOD {lod} (level {level}, {shown}): PSNR {result['psnr']:.2f} dB, SSIM "
                f"{result['ssim']:.4f}{extra}")

    out_dir = Path(out_dir)
    report = {"scene": str(scene_path), "split": split, "views": len(views), "device": _device_name(device),
              "refs": references, "rows": rows}
    write_csv(out_dir / "rd.csv", rows)
    write_json(out_dir / "rd.json", report)
    scene_name = (scene_path.parent if scene_path.is_file() else scene_path).resolve().name
    title = f"Rate-distortion: {scene_name} ({split}, {len(views)} views)"
    skipped = sorted({r["name"] for r in rows if r["bytes"] is None})
    if skipped:
        log(f"rd.png leaves out {', '.join(skipped)}: a checkpoint has no size in bytes")
    plot(out_dir / "rd.png", rows, references, title)
    log(f"wrote {out_dir / 'rd.csv'}, {out_dir / 'rd.json'} and {out_dir / 'rd.png'}")
    return report


def write_csv(path: Path, rows: list[dict]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            for row in rows:
                out.writerow([MISSING if row[c] is None else row[c] for c in COLUMNS])

    atomic_write(path, write, suffix=".csv")


def plot(path: Path, rows: list[dict], refs: list[dict], title: str) -> None:
    """Bytes (log scale) against PSNR: one line per file over its prefixes, references as labelled stars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)  # Agg, whatever pyplot's backend is
    ax = fig.add_subplot()
    curves: dict[str, list[dict]] = {}
    for row in rows:
        if row["bytes"] is not None:
            curves.setdefault(row["file"], []).append(row)
    for points in curves.values():
        points.sort(key=lambda r: r["bytes"])
        ax.plot([r["bytes"] for r in points], [r["psnr"] for r in points], marker="o", label=points[0]["name"])
    for ref in refs:
        ax.plot([ref["bytes"]], [ref["psnr"]], marker="*", markersize=13, linestyle="none", label=ref["name"])
        ax.annotate(ref["name"], (ref["bytes"], ref["psnr"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if curves or refs:
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # labels on the decades only: minor labels collide
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no sized points to plot", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("bytes (log scale)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")

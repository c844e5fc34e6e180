"""The main job: load a scene, train, evaluate every LOD, write ``metrics.json``, renders and checkpoint.

The command line's ``tvq train`` and ``tvq demo`` are thin wrappers over ``train_scene``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from . import runtime
from .data import load_scene
from .errors import TvqError
from .atomic import write_json
from .eval import evaluate
from .render import RenderOptions
from .train import RECIPE_OPTIONS, TrainConfig, Trainer, vertex_report


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bar:
    """A progress bar for one stage of longer work (``label``, ``total`` units): rich on a terminal, a line
    every ``1/ticks`` of the work otherwise (logs, CI). ``bar(done, info="", eta=None)`` updates it (``eta``,
    seconds left, is shown on the lines; the terminal bar estimates its own with ``remaining``);
    ``close()`` ends it."""

    def __init__(self, label: str, total: int, log=_log, start: int = 0, ticks: int = 10,
                 line_label: str | None = None, remaining: bool = False):
        self.label, self.total, self.log, self.tick, self.rich = label, max(int(total), 1), log, -1, None
        self.ticks, self.line_label = ticks, line_label or label
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
            if remaining:
                columns += [TextColumn("eta"), TimeRemainingColumn()]
            self.rich = Progress(*columns, TextColumn("{task.fields[info]}"), console=Console(stderr=True))
            self.task = self.rich.add_task(label, total=self.total, completed=start, info="")
            self.rich.start()

    def __call__(self, done: int, info: str = "", eta: float | None = None) -> None:
        if self.rich is not None:
            self.rich.update(self.task, completed=done, info=info)
            return
        tick = done * self.ticks // self.total
        if tick != self.tick:
            self.tick = tick
            line = f"{self.line_label} {done}/{self.total}  {info}".rstrip()
            self.log(line + (f"  eta {eta:.0f} s" if eta is not None else ""))

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()


class _Progress:
    """Training's bar: loss, PSNR and throughput, a line every 5% off a terminal."""

    def __init__(self, total: int, start: int, minutes: float | None):
        self.minutes = minutes
        self.bar = Bar("train", total, start=start, ticks=20, line_label="step", remaining=True)

    def __call__(self, trainer: Trainer, stats: dict) -> None:
        info = (f"loss {stats['loss']:.4f}  psnr {stats['psnr']:.2f}  "
                f"{stats['rays_per_s'] / 1e3:.0f}k rays/s  {stats['samples_per_s'] / 1e6:.1f}M samples/s")
        if self.minutes:
            info += f"  {trainer.elapsed / 60:.1f}/{self.minutes:g} min"
        fraction = max(trainer.progress_fraction(), 1e-9)
        self.bar(trainer.step, info, eta=trainer.elapsed * (1 - fraction) / fraction)

    def close(self) -> None:
        self.bar.close()


def train_scene(scene_path: Path, out_dir: Path, config: TrainConfig, downscale: int = 1, resume: bool = False,
                arch: str | None = None, eval_split: str = "test", log=_log, write_file: bool = True,
                inherit: tuple[str, ...] = ()) -> dict:
    """Train on a scene folder, evaluate every LOD on ``eval_split``; returns the metrics dict it writes
    (with the .tvq file's sizes unless ``write_file`` is off: a study that compares training recipes).
    ``inherit``: config fields that a resumed run takes from its checkpoint (those the user did not set)."""
    config.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TvqError(f"{out_dir}: exists and is not a folder")
    if (out_dir / "checkpoint.pt").exists() and not resume:
        raise TvqError(f"{out_dir}: already holds a checkpoint; pass --resume to continue it or choose another --out")
    scene = load_scene(scene_path, downscale=downscale)
    views = scene.split(eval_split) or scene.split("val")
    if not views:
        raise TvqError(f"{scene_path}: no '{eval_split}' or 'val' views to evaluate on")
    info = runtime.init(arch)
    log(f"tvq: Taichi on {info.arch}; {scene.format} scene, {len(scene.split('train'))} training views "
        f"of {scene.width}x{scene.height}")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = runtime.device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(scene, config, out_dir, log=log, inherit=inherit)
    trainer.setup(resume=resume)
    background = trainer.data.background
    quick = RenderOptions(samples_per_cell=config.samples_per_cell, early_stop=True)

    def periodic_eval(t: Trainer) -> dict:
        res = evaluate(t.field, views, background, lods=[t.field.num_lods - 1], options=quick,
                       max_views=config.eval_views)[0]
        log(f"step {t.step}: test PSNR {res['psnr']:.2f} dB (finest LOD, {res['views']} views)")
        return {"psnr": res["psnr"]}

    progress = _Progress(config.iters, trainer.step, config.minutes)
    try:
        trainer.fit(progress=progress, evaluate=periodic_eval)
    finally:
        progress.close()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    log(f"trained {trainer.step} steps in {trainer.elapsed:.1f} s; evaluating {len(views)} views per LOD")
    t0 = time.perf_counter()
    lods = evaluate(trainer.field, views, background, options=quick, render_dir=out_dir / "renders")
    # time to 30 dB counts only checks of the final kind of model (not a VQ run's raw warm start)
    reached = [h["elapsed"] for h in trainer.history
               if h.get("psnr", 0) >= 30.0 and h.get("grid", trainer.field.grid.kind) == trainer.field.grid.kind]
    metrics = {
        "scene": str(scene_path),
        "lods": lods,
        "bits": config.bits,
        "kind": config.kind,
        "train_seconds": trainer.elapsed,
        "iterations": trainer.step,
        "eval_seconds": time.perf_counter() - t0,
        "seconds_to_30db": reached[0] if reached else None,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({info.arch})",
        "peak_gpu_memory_bytes": peak,
        "octree": vertex_report(trainer.field.octree, trainer.field.grid.levels),
        "history": trainer.history,
        "pruning": trainer.pruning,  # the vertices per level before and after each pruning
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
    }
    if not write_file:
        write_json(out_dir / "metrics.json", metrics)
        return metrics
    metrics["file"] = write_model_file(trainer, out_dir / "model.tvq")
    lod_bytes = [lod["end"] for lod in metrics["file"]["lods"]]
    for row, end in zip(metrics["lods"], lod_bytes):
        row["bytes"] = end  # the prefix of model.tvq that renders this LOD
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def write_model_file(trainer: Trainer, path: Path) -> dict:
    """The run's shareable model: ``model.tvq``, with its size report (no per-chunk codec trials)."""
    from .codec import camera_header
    from .export import write_field

    data = trainer.data
    cameras = camera_header(data.Ks[0].cpu(), int(data.images.shape[2]), int(data.images.shape[1]), data.c2ws.cpu())
    report = write_field(path, trainer.field, [float(x) for x in trainer.scene.background], cameras,
                         info={"steps": trainer.step, "train_seconds": trainer.elapsed})
    return {k: v for k, v in report.items() if k not in ("chunks", "model")}


def format_table(metrics: dict) -> str:
    file = metrics.get("file")  # absent for a run without its file (a recipe study)
    lines = [f"{'LOD':>4} {'level':>5} {'PSNR':>7} {'SSIM':>6} {'KiB':>9}"]
    levels = metrics["config"]["max_level"] - metrics["config"]["num_lods"] + 1
    for row in metrics["lods"]:
        size = f"{row['bytes'] / 1024:>9.1f}" if "bytes" in row else f"{'-':>9}"
        lines.append(f"{row['lod']:>4} {levels + row['lod']:>5} {row['psnr']:>7.2f} {row['ssim']:>6.4f} {size}")
    if file is not None:
        parts = ", ".join(f"{k} {v / 1024:.1f}" for k, v in file["components"].items() if v)
        lines.append(f"model.tvq: {file['file_bytes'] / 1024:.1f} KiB ({metrics['kind']}, bits={metrics['bits']}; "
                     f"KiB: {parts})")
    lines.append(f"octree: {metrics['octree']}")
    lines.append(f"trained {metrics['iterations']} steps in {metrics['train_seconds']:.1f} s on {metrics['device']}")
    return "\n".join(lines)


DEMO_CONFIG = dict(max_level=6, num_lods=3, batch_rays=2048, samples_per_cell=2, eval_every=0)


def demo(out: Path, bits: int = 4, iters: int = 1500, arch: str | None = None, echo=print) -> dict:
    """Make the built-in scene under ``out/scene`` (once), train a small model on it, print a table."""
    from .data.synthetic import make_scene

    out = Path(out)
    scene_dir = out / "scene"
    if not (scene_dir / "transforms_train.json").is_file():
        make_scene(scene_dir, size=96, n_train=40, n_val=4, n_test=4, seed=0)
        echo(f"built-in scene written to {scene_dir}")
    model_dir = out / f"model-bits{bits}"
    resume = (model_dir / "checkpoint.pt").is_file()
    config = TrainConfig(bits=bits, iters=iters, **DEMO_CONFIG)
    # a demo folder from an earlier version continues with the recipe it was trained with
    metrics = train_scene(scene_dir, model_dir, config, resume=resume, arch=arch, inherit=RECIPE_OPTIONS)
    echo(format_table(metrics))
    echo(f"renders: {model_dir / 'renders'}   metrics: {model_dir / 'metrics.json'}")
    return metrics


def render_orbit(model_path: Path, out: Path, frames: int = 36, lod: int | None = None, width: int | None = None,
                 fps: int = 24, arch: str | None = None, max_bytes: int | None = None, log=_log) -> Path:
    """Render ``frames`` views on an orbit of a .tvq (or its first ``max_bytes``) or a checkpoint; PNG
    frames into a folder, or one .gif / .mp4 file."""
    import numpy as np

    from .eval import fast_renderer, to_uint8, write_png, write_video
    from .export import open_model
    from .render import orbit_poses

    out = Path(out)
    suffix = "" if out.is_dir() else out.suffix.lower()
    if suffix not in ("", ".gif", ".mp4"):
        raise TvqError(f"{out}: --out must be a folder, a .gif or a .mp4 file")
    if not suffix and out.exists() and not out.is_dir():
        raise TvqError(f"{out}: exists and is not a folder")
    if width is not None and width < 8:
        raise TvqError(f"--size must be at least 8, got {width}")
    model = open_model(model_path, max_bytes=max_bytes, arch=arch)
    if model.note:
        log(f"{model_path}: {model.note}; rendering the {model.lods} complete LOD(s) ({model.bytes_used} bytes)")
    field = model.field
    lod = model.lods - 1 if lod is None else lod
    if not 0 <= lod < model.lods:
        available = "" if model.lods == model.num_lods else f" (the first {max_bytes} bytes hold {model.lods})"
        raise TvqError(f"--lod must be in 0..{model.lods - 1}, got {lod}{available}")
    cams = model.cameras
    if cams is None:
        raise TvqError(f"{model_path}: the file holds no cameras to place an orbit")
    K = cams["K"].double().clone()
    w, h = cams["width"], cams["height"]
    if width is not None:
        K[:2] *= width / w
        w, h = width, max(1, round(h * width / w))
    center = field.octree.center
    renderer = fast_renderer(field, model.background)
    images = []
    for k, pose in enumerate(orbit_poses(cams["c2ws"], center, frames)):
        image = renderer.render(K, pose, w, h, lod)["color"]
        if suffix:
            images.append(to_uint8(image))
        else:
            write_png(out / f"frame_{k:04d}.png", image)
    if not suffix:
        for stale in out.glob("frame_*.png"):  # frames of an earlier, longer orbit
            if not stale.stem[6:].isdigit() or int(stale.stem[6:]) >= frames:
                stale.unlink()
        return out
    write_video(out, np.stack(images), fps, instead="write a .gif or a folder of PNGs")
    return out

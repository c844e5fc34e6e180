"""The `tvq` command: a thin Typer layer over the library.

Each command parses its options and calls one library function. Problems with the user's input arrive as
``TvqError`` and leave as one line on stderr with exit code 2; ``--debug`` (before the command) shows the
traceback instead.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from tvq.errors import TvqError

app = typer.Typer(
    name="tvq",
    help="Train, compress, inspect and render neural radiance fields with Taichi kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}



class Arch(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


class Density(str, Enum):
    relu = "relu"
    exp = "exp"


class OctreeSource(str, Enum):
    auto = "auto"
    depth = "depth"
    masks = "masks"


ArchOption = typer.Option(None, "--arch", help="Taichi backend (default: $TVQ_ARCH, else auto: CUDA when usable).")


def _value(choice: Optional[Enum]) -> Optional[str]:
    return None if choice is None else choice.value


def versions() -> str:
    """tvq's version and those of the packages it is tested with (read from the installed metadata, so
    Taichi and torch are not imported just to print them)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"tvq {of('tvq')} (taichi {of('taichi')}, torch {of('torch')}, typer {of('typer')})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(versions())
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the versions of tvq, Taichi, torch and Typer, then exit."),
) -> None:
    _state["debug"] = debug


@app.command("scene")
def scene_cmd(
    path: Path = typer.Argument(..., help="A scene folder (Blender, nerfstudio/instant-ngp or RTMV)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    downscale: int = typer.Option(1, "--downscale", min=1, help="Load images downscaled by this factor."),
) -> None:
    """Summarise a scene folder: format, splits, image size, depth and its bounding box."""
    from tvq.data import load_scene, summarize

    info = summarize(load_scene(path, downscale=downscale))
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"{path}: {info['format']} scene, {info['width']}x{info['height']}")
    for name, count in info["splits"].items():
        typer.echo(f"  {name:>6}: {count} views")
    typer.echo(f"  depth: {'yes' if info['depth'] else 'no'}   alpha: {'yes' if info.get('alpha') else 'no'}")
    if info["bbox"] is not None:
        lo, hi = info["bbox"]
        typer.echo("  depth bbox: [" + ", ".join(f"{a:.3f}..{b:.3f}" for a, b in zip(lo, hi)) + "]")


@app.command("make-scene")
def make_scene_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write the Blender-format scene into."),
    size: int = typer.Option(128, "--size", min=16, help="Image width and height in pixels."),
    train: int = typer.Option(48, "--train", min=1, help="Number of training views."),
    val: int = typer.Option(8, "--val", min=0, help="Number of validation views."),
    test: int = typer.Option(8, "--test", min=1, help="Number of test views."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same scene."),
    force: bool = typer.Option(False, "--force", help="Overwrite a folder that already holds a scene."),
) -> None:
    """Write the built-in analytic demo scene (RGBA images and metric depth) in Blender format."""
    from tvq.data.synthetic import make_scene

    make_scene(out_dir, size=size, n_train=train, n_val=val, n_test=test, seed=seed, overwrite=force)
    typer.echo(f"wrote {train}+{val}+{test} views of {size}x{size} to {out_dir}")


def _parse_steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise TvqError(f"--prune-at takes comma-separated step numbers, got {text!r}") from None


@app.command("train")
def train_cmd(
    scene: Path = typer.Argument(..., help="A scene folder (Blender, nerfstudio/instant-ngp or RTMV)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: checkpoint, metrics.json, renders."),
    bits: int = typer.Option(0, "--bits", help="0: raw fp features (NGLOD-NeRF); b: VQ-AD with b-bit learned indices."),
    hash_: bool = typer.Option(False, "--hash", help="With --bits: fixed random indices (hash baseline)."),
    max_level: int = typer.Option(8, "--max-level", help="Finest octree level (2^level cells per axis)."),
    num_lods: int = typer.Option(4, "--num-lods", help="Number of feature levels (LODs), the finest ones."),
    iters: int = typer.Option(20000, "--iters", help="Training steps."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Training time budget (stops at iters or minutes)."),
    downscale: int = typer.Option(1, "--downscale", min=1, help="Downscale images by this factor."),
    batch_rays: int = typer.Option(1 << 14, "--batch-rays", help="Rays per step."),
    lr_decay: Optional[float] = typer.Option(None, "--lr-decay", help="Final learning rate relative to the start "
                                             "(exponential decay over the budget, or with --vq-freeze over the fixed-"
                                             "index phase; 1 keeps it constant; default: 0.1 with raw features or "
                                             "fixed indices, 1 with learned indices)."),
    vq_warmup: Optional[float] = typer.Option(None, "--vq-warmup", help="With --bits: fraction of the budget "
                                              "trained with raw features before k-means codebooks take over (0: VQ "
                                              "from the start; default: until the last pruning of a visual hull)."),
    vq_freeze: Optional[float] = typer.Option(None, "--vq-freeze", help="With --bits: fraction of the budget after "
                                              "which the indices are fixed and the codebooks and decoder train on "
                                              "at a rate decaying to --lr-decay (default 0.1); 1: learned to the "
                                              "end (default: 0.6 for a visual hull, 1 for a depth octree)."),
    samples_per_cell: Optional[int] = typer.Option(None, "--samples-per-cell", min=1, help="Samples per intersected "
                                                   "cell (default: 2 for a visual hull, 4 for a depth octree)."),
    lod_ratio: Optional[float] = typer.Option(None, "--lod-ratio", help="Each step trains one LOD, each finer one this "
                                              "many times as likely as the one before (default: 4 for a visual hull, "
                                              "2 for a depth octree, the paper's)."),
    density: Optional[Density] = typer.Option(None, "--density", help="Decoder density activation: exp (a truncated "
                                              "exponential: sharper surfaces, fewer cells; default) or relu (the "
                                              "paper's)."),
    decoder_hidden: Optional[int] = typer.Option(None, "--decoder-hidden", help="Width of the decoder MLP's hidden "
                                                 "layer (default 64; the paper's: 128)."),
    adam_beta2: Optional[float] = typer.Option(None, "--adam-beta2", help="Adam's second-moment decay (default 0.99; "
                                               "the paper's: 0.999)."),
    random_background: bool = typer.Option(False, "--random-background", help="Composite each training ray on a random "
                                           "colour (needs alpha masks in every training view)."),
    octree: OctreeSource = typer.Option(OctreeSource.auto, "--octree",
                                        help="Octree source: depth maps, masks (visual hull), or auto (depth if present)."),
    prune_at: str = typer.Option("", "--prune-at", help="Comma-separated steps at which to prune unused cells "
                                 "(default for a visual hull: 500,2000, and N,N+1000 when subdividing at N; none "
                                 "for depth)."),
    subdivide_at: Optional[int] = typer.Option(None, "--subdivide-at", help="Step after which every finest cell is "
                                               "split into 8: the octree is built and pruned at --max-level minus 1 "
                                               "until then, and the finest LOD starts there (0: never; default: 2000 "
                                               "for a visual hull when --iters is at least 6000, never for depth)."),
    eval_every: int = typer.Option(1000, "--eval-every", help="Steps between quick test-PSNR checks (0: never)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint in --out where it stopped."),
    arch: Optional[Arch] = ArchOption,
) -> None:
    """Train a radiance field (raw or vector-quantised) on a scene, then evaluate every LOD."""
    from tvq.job import format_table, train_scene
    from tvq.train import RECIPE_OPTIONS, TrainConfig

    steps = _parse_steps(prune_at) if prune_at else None
    # recipe options left unset take TrainConfig's defaults, or on --resume the checkpoint's own
    recipe = dict(zip(RECIPE_OPTIONS, (_value(density), decoder_hidden, adam_beta2, lr_decay, vq_freeze)))
    given = {key: value for key, value in recipe.items() if value is not None}
    config = TrainConfig(bits=bits, hash=hash_, max_level=max_level, num_lods=num_lods, iters=iters, minutes=minutes,
                         batch_rays=batch_rays, vq_warmup=vq_warmup, samples_per_cell=samples_per_cell,
                         lod_ratio=lod_ratio,
                         octree_from=octree.value, prune_at=steps, subdivide_at=subdivide_at, eval_every=eval_every,
                         seed=seed, random_background=random_background, **given)
    metrics = train_scene(scene, out, config, downscale=downscale, resume=resume, arch=_value(arch),
                          inherit=tuple(key for key in recipe if key not in given))
    typer.echo(format_table(metrics))
    typer.echo(f"metrics: {out / 'metrics.json'}   renders: {out / 'renders'}   checkpoint: {out / 'checkpoint.pt'}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("tvq-demo"), "--out", "-o", help="Folder for the demo scene and the trained model."),
    bits: int = typer.Option(4, "--bits", help="Index bitwidth of the VQ model (0: raw features)."),
    iters: int = typer.Option(1500, "--iters", help="Training steps."),
    arch: Optional[Arch] = ArchOption,
) -> None:
    """Make the built-in scene (if needed), train a small VQ model on it, evaluate, print a table."""
    from tvq.job import demo

    demo(out, bits=bits, iters=iters, arch=_value(arch), echo=typer.echo)


@app.command("render")
def render_cmd(
    model: Path = typer.Argument(..., help="A model.tvq (or any .tvq) or a checkpoint.pt written by tvq train."),
    out: Path = typer.Option(..., "--out", "-o", help="A folder for PNG frames, or a .gif/.mp4 file."),
    orbit: int = typer.Option(36, "--orbit", min=1, help="Number of frames on an orbit around the scene."),
    lod: Optional[int] = typer.Option(None, "--lod", help="LOD to render (default: the finest available)."),
    size: Optional[int] = typer.Option(None, "--size", help="Image width (height follows the training aspect)."),
    fps: int = typer.Option(24, "--fps", min=1, help="Frames per second of a video."),
    max_bytes: Optional[int] = typer.Option(None, "--bytes", min=0, help="Render what the first N bytes of the "
                                            ".tvq give (the LODs complete in them), as a stream would."),
    arch: Optional[Arch] = ArchOption,
) -> None:
    """Render an orbit of a trained model as PNG frames, a GIF or an MP4."""
    from tvq.job import render_orbit

    written = render_orbit(model, out, frames=orbit, lod=lod, width=size, fps=fps, arch=_value(arch),
                           max_bytes=max_bytes)
    typer.echo(f"wrote {written}")


class MlpWeights(str, Enum):
    int8 = "int8"
    fp16 = "fp16"


MlpOption = typer.Option(None, "--mlp", help="Decoder weights in the file: int8 (fp16 scales per row and per column; the default) or "
                         "fp16 (the default with --no-entropy).")


def _mlp(choice: Optional[MlpWeights], no_entropy: bool) -> str:
    return choice.value if choice is not None else ("fp16" if no_entropy else "int8")


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint.pt written by tvq train."),
    out: Path = typer.Option(..., "--out", "-o", help="The .tvq file to write."),
    no_entropy: bool = typer.Option(False, "--no-entropy", help="Write the raw layout (no per-chunk entropy coding; "
                                    "fp16 MLP unless --mlp says otherwise): the paper's accounting."),
    mlp: Optional[MlpWeights] = MlpOption,
) -> None:
    """Write the .tvq model file of a checkpoint (what tvq train writes as model.tvq)."""
    from tvq.export import export_checkpoint

    report = export_checkpoint(checkpoint, _tvq_path(out), entropy=not no_entropy, mlp=_mlp(mlp, no_entropy))
    typer.echo(_size_line(out, report))


@app.command("info")
def info_cmd(
    file: Path = typer.Argument(..., help="A .tvq file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Show a .tvq file's model, its chunk table and its bytes per component, level and LOD."""
    from tvq import codec

    if not codec.is_tvq(file):
        raise TvqError(f"{file}: not a .tvq file" if file.is_file() else f"{file}: no such file")
    report = codec.inspect(file)
    if as_json:
        typer.echo(json.dumps(report))
        return
    m = report["model"]
    detail = {"vq": f", {m['bits']}-bit indices", "hash": f", {m['bits']}-bit hash", "lra": f", rank {m['rank']}"}
    typer.echo(f"{file}: {report['file_bytes']:,} bytes; {m['kind']} model ({report['method']}{detail.get(m['kind'], '')}), "
               f"levels {m['levels'][0]}..{m['levels'][-1]}, feature dim {m['feature_dim']}")
    typer.echo(f"{'chunk':>5} {'offset':>10} {'kind':<11} {'level':>5} {'codec':<13} {'bytes':>10} {'raw':>10} "
               f"{'cumulative':>11}")
    for row in report["chunks"]:
        level = "-" if row["level"] is None else row["level"]
        typer.echo(f"{row['chunk']:>5} {row['offset']:>10,} {row['kind']:<11} {level:>5} {row['codec']:<13} "
                   f"{row['bytes']:>10,} {row['raw_bytes']:>10,} {row['cumulative']:>11,}")
    typer.echo("components: " + ", ".join(f"{k} {v:,}" for k, v in report["components"].items() if v))
    typer.echo("LODs: " + ", ".join(f"LOD {l['lod']} (level {l['level']}) {l['end']:,} bytes" for l in report["lods"]))


@app.command("eval")
def eval_cmd(
    files: list[Path] = typer.Argument(..., help="Model files: .tvq (every LOD prefix is a point) or checkpoints."),
    scene: Path = typer.Option(..., "--scene", help="The scene folder the models were trained on."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for rd.csv, rd.json and the rate-distortion plot rd.png."),
    ref: list[str] = typer.Option([], "--ref", help="A reference point NAME:BYTES:PSNR for the plot (repeatable)."),
    lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help="Folder holding alexnet-owt-7be5be79.pth "
                                                 "and alex.pth for LPIPS (else the torch hub cache; never downloaded)."),
    split: str = typer.Option("test", "--split", help="Views to evaluate on."),
    max_views: Optional[int] = typer.Option(None, "--max-views", min=1, help="Evaluate on the first N views only."),
    arch: Optional[Arch] = ArchOption,
) -> None:
    """Bytes, PSNR, SSIM (and LPIPS) of every LOD prefix of each file: a rate-distortion table and plot."""
    from tvq.rd import evaluate_files

    result = evaluate_files(files, scene, out, refs=ref, lpips_weights=None if lpips_weights is None else str(lpips_weights),
                            split=split, max_views=max_views, arch=_value(arch), log=lambda m: typer.echo(m, err=True))
    typer.echo(f"{'name':<20} {'LOD':>3} {'bytes':>12} {'PSNR':>7} {'SSIM':>6} {'LPIPS':>6}")
    for row in result["rows"]:
        size = "n/a" if row["bytes"] is None else f"{row['bytes']:,}"
        lp = "n/a" if row["lpips"] is None else f"{row['lpips']:.3f}"
        typer.echo(f"{row['name'][:20]:<20} {row['lod']:>3} {size:>12} {row['psnr']:>7.2f} {row['ssim']:>6.3f} {lp:>6}")
    typer.echo(f"wrote {out / 'rd.csv'}, {out / 'rd.json'}, {out / 'rd.png'}")


@app.command("tour")
def tour_cmd(
    step: Optional[str] = typer.Argument(None, help="One step (octree, carve, raymarch, gather, codebook, composite, "
                                         "importance, train, or its number 1-8); all of them by default."),
    out: Path = typer.Option(Path("tvq-tour"), "--out", "-o", help="Folder for the pictures and timings.json."),
) -> None:
    """The kernel tour: each kernel's math, its Taichi output beside its torch twin, gradchecks, pictures."""
    from tvq.apps.tour import run_tour

    try:
        run_tour(step, out, log=typer.echo)
    except AssertionError as err:  # a kernel drifted from its twin: a bug the tour found, not a usage error
        typer.echo(f"error: tour: a kernel disagrees with its twin: {err}".splitlines()[0], err=True)
        raise typer.Exit(1) from None
    typer.echo(f"pictures and timings.json in {out}")


class ViewMode(str, Enum):
    color = "color"
    depth = "depth"
    opacity = "opacity"
    samples = "samples"
    cells = "cells"


@app.command("view")
def view_cmd(
    model: Path = typer.Argument(..., help="A .tvq file (or a checkpoint.pt) to inspect."),
    scene: Optional[Path] = typer.Option(None, "--scene", help="The scene folder: snap to its cameras, ground truth "
                                         "and PSNR beside the render."),
    screenshot: Optional[Path] = typer.Option(None, "--screenshot", help="Render one frame headless to this PNG "
                                              "and exit."),
    lod: Optional[int] = typer.Option(None, "--lod", help="LOD to show (default: the finest available)."),
    view: Optional[int] = typer.Option(None, "--view", help="Camera to start from: the scene's test views, then its "
                                       "training views; without --scene the file's training poses."),
    mode: ViewMode = typer.Option(ViewMode.color, "--mode", help="What to draw."),
    size: Optional[str] = typer.Option(None, "--size", help="Window or screenshot size WxH (default 800x800; a "
                                       "screenshot defaults to the camera's image size)."),
    max_bytes: Optional[int] = typer.Option(None, "--bytes", min=0, help="Open only the first N bytes of the .tvq."),
    stream: bool = typer.Option(False, "--stream", help="Start with the streaming simulation running."),
    bandwidth: float = typer.Option(64.0, "--bandwidth", min=0.1, help="Simulated bandwidth in kB/s."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic resolution holding --target-fps."),
    target_fps: float = typer.Option(10.0, "--target-fps", min=0.5, help="Frame rate dynamic resolution aims for."),
    downscale: int = typer.Option(1, "--downscale", min=1, help="Load the scene's images downscaled."),
    arch: Optional[Arch] = ArchOption,
) -> None:
    """The realtime GGUI inspector: orbit, LODs, view modes, streaming simulation, cameras, screenshots."""
    from tvq.apps.viewer import screenshot as take_screenshot
    from tvq.apps.viewer import view as open_viewer

    if screenshot is not None:
        shot = take_screenshot(model, screenshot, lod=lod, view=view, mode=mode.value, size=size, scene=scene,
                               max_bytes=max_bytes, arch=_value(arch), scene_downscale=downscale)
        w, h = shot["size"]
        typer.echo(f"wrote {shot['path']} ({w}x{h}, LOD {shot['lod']}, {shot['mode']})")
        return
    open_viewer(model, scene=scene, size=size or "800x800", max_bytes=max_bytes, arch=_value(arch), lod=lod,
                mode=mode.value, stream=stream, bandwidth=bandwidth, dynamic=dynamic, target_fps=target_fps,
                scene_downscale=downscale, camera=view)


class Method(str, Enum):
    kmeans = "kmeans"
    lra = "lra"
    vqrf = "vqrf"
    hybrid = "hybrid"


@app.command("compress")
def compress_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint of an uncompressed model (tvq train --bits 0; hybrid: "
                                      "of a VQ-AD model, --bits b)."),
    out: Path = typer.Option(..., "--out", "-o", help="The .tvq file to write."),
    method: Method = typer.Option(..., "--method", help="kmeans: k-means VQ of the trained features (kmVQ); "
                                  "lra: low-rank KLT truncation; vqrf: importance pruning, weighted codebooks, "
                                  "8-bit kept features and fine-tuning (VQRF); hybrid: VQRF's pruning, keep set, fine-tuning "
                                  "and 8-bit storage around a VQ-AD model's learned indices."),
    bits: int = typer.Option(6, "--bits", help="kmeans: index bits (2^bits codes per level)."),
    rank: int = typer.Option(4, "--rank", help="lra: components kept per level."),
    scene: Optional[Path] = typer.Option(None, "--scene", help="vqrf: the scene it was trained on (default: the "
                                         "folder the checkpoint names)."),
    downscale: int = typer.Option(1, "--downscale", min=1, help="vqrf: the --downscale it was trained with."),
    prune: str = typer.Option("0.001", "--prune", help="vqrf, hybrid: beta_p, the share of a level's importance "
                              "pruned (one value, or one per LOD, comma-separated, coarsest first)."),
    keep: str = typer.Option("0.6", "--keep", help="vqrf, hybrid: beta_k; vertices above this importance quantile "
                             "stay unquantised in 8 bits (1: none; one value or one per LOD)."),
    codebook: int = typer.Option(4096, "--codebook", help="vqrf: codes per level at most."),
    finetune_steps: int = typer.Option(2000, "--finetune-steps", help="vqrf: joint fine-tuning steps."),
    importance_rays: Optional[int] = typer.Option(None, "--importance-rays", min=1,
                                                  help="vqrf: training rays for the importance (default: all)."),
    no_entropy: bool = typer.Option(False, "--no-entropy", help="Write the raw layout (no per-chunk entropy coding; "
                                    "fp16 MLP unless --mlp says otherwise)."),
    mlp: Optional[MlpWeights] = MlpOption,
    seed: int = typer.Option(0, "--seed", help="k-means seed."),
) -> None:
    """Compress a trained model after training into a .tvq (the paper's post-hoc baselines, VQRF, the hybrid)."""
    from tvq.compress import compress_checkpoint
    from tvq.compress.vqrf_model import VqrfOptions

    options = VqrfOptions(prune=_quantiles(prune, "--prune"), keep=_quantiles(keep, "--keep"), codebook=codebook, finetune_steps=finetune_steps,
                          importance_rays=importance_rays, seed=seed)
    report = compress_checkpoint(checkpoint, _tvq_path(out), method.value, bits=bits, rank=rank,
                                 entropy=not no_entropy, mlp=_mlp(mlp, no_entropy), seed=seed,
                                 log=lambda m: typer.echo(m, err=True), scene=scene, downscale=downscale,
                                 vqrf=options)
    if method in (Method.vqrf, Method.hybrid):
        for row in report["levels"]:
            typer.echo(f"level {row['level']}: {row['vertices']:,} vertices: {row['pruned']:,} pruned (0), "
                       f"{row['quantised']:,} quantised, {row['kept']:,} kept (8-bit)")
        if report["psnr_before"] is not None:
            typer.echo(f"PSNR on {report['eval_views']} test views, finest LOD: {report['psnr_before']:.2f} dB before, "
                       f"{report['psnr_after']:.2f} dB after")
        typer.echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report["seconds"].items()))
    typer.echo(_size_line(out, report) + f" in {report['compress_seconds']:.1f} s")


def _quantiles(text: str, name: str):
    """'0.6' -> 0.6; '1,0.9,0.6' -> (1.0, 0.9, 0.6) (one per LOD)."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise TvqError(f"{name} takes a number or comma-separated numbers (one per LOD), got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _tvq_path(out: Path) -> Path:
    if out.is_dir():
        raise TvqError(f"{out}: is a folder; --out names the .tvq file to write")
    return out


def _size_line(out: Path, report: dict) -> str:
    parts = ", ".join(f"{k} {v:,}" for k, v in report["components"].items() if v)
    return f"wrote {out}: {report['file_bytes']:,} bytes ({parts})"


def _click_exception_type() -> type:
    """The base class of the command-line parser's usage errors: click's ``ClickException`` with a Typer
    that depends on click, or the copy a newer Typer carries; found through ``typer.BadParameter`` so that
    no package the project does not declare is imported."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point. Exit codes: 0 done (also ``--help`` and ``--version``); 2 a usage error (the
    usage line and the error on stderr) or a ``TvqError`` (one line on stderr); 130 interrupted; 1 a bug
    (one line naming it; ``--debug`` shows the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="tvq", standalone_mode=False)
    except TvqError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):  # Typers that depend on click turn Ctrl-C into Abort
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except _click_exception_type() as err:
        err.show()
        sys.exit(2 if err.exit_code == 1 else err.exit_code)  # usage errors carry 2; other parser errors too
    except Exception as err:
        if debug:
            raise
        typer.echo(f"error: {type(err).__name__}: {err} (run with --debug for the traceback)", err=True)
        sys.exit(1)
    # Without standalone mode Typer returns the exit code of --help, --version and Ctrl-C (130).
    if isinstance(code, int) and code != 0:
        if code == 130:
            typer.echo("interrupted", err=True)
        sys.exit(code)


if __name__ == "__main__":
    main()

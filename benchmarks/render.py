"""Inference speed: ms per frame for every LOD of each model, the fast path (``tvq.infer.FastRenderer``)
against the training renderer (``tvq.render.render_image`` with early termination), and the viewer's own
frame time (headless GGUI: render, canvas, panel, read-back), in one run and one JSON.

    python -m benchmarks.render --models raw=runs/lego-b0/model.tvq b6=runs/lego-b6/model.tvq \
        --size 800 --out benchmarks/results/render-h200.json
    python -m benchmarks.render --models raw=tiny.tvq --size 200 --iters 3 --out /tmp/render-cpu.json   # CPU

The camera is the first training pose of each file at ``--size`` x ``--size`` (the training camera's
horizontal field of view), as the viewer opens. Per LOD: median / min ms of both paths, samples decoded
(the fast path stops marching and decoding a ray at transmittance 1e-4; the training path decodes every
sample), and the PSNR of the fast image against the training renderer's (identical images read inf).
The viewer rows time one frame of ``ViewerWindow`` at that size at the finest LOD with the render scale
fixed at 1 (split into render, canvas upload, panel, and draw + read-back of the headless window: GGUI
draws offscreen only into a host copy of the frame, which the viewer's window presents instead; the copy is
timed, its conversion into a float image is not), and with dynamic resolution holding ``--target-fps`` (the
scale it settles at and its fps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks._timing import device_name, time_ms, write_json
from tvq import runtime
from tvq.errors import TvqError


def _camera(model, size: int):
    cams = model.cameras
    if cams is None:
        raise TvqError("the model file holds no cameras")
    K = cams["K"].double().clone()
    scale = size / cams["width"]
    K = torch.tensor([[K[0, 0] * scale, 0.0, size / 2], [0.0, K[1, 1] * scale, size / 2], [0, 0, 1]],
                     dtype=torch.float64)
    return K, cams["c2ws"][0].double()


def _variants(device, half: bool) -> list[tuple[str, dict]]:
    """The inference paths timed beside the default one (the fused kernel): the rounds, with the MLP in
    float32 and (CUDA) in float16, and (CUDA) the fused kernel at other block sizes."""
    if device.type != "cuda":
        return [("rounds", {"fused": False})]
    return [("rounds", {"fused": False}), ("rounds_half", {"fused": False, "half": True})] + [
        (f"fused_block{b}", {"block_dim": b}) for b in (32, 128, 256)]


def bench_model(name: str, path: Path, size: int, iters: int, warmup: int, reference: bool, half: bool) -> dict:
    from tvq.export import open_model
    from tvq.infer import FastRenderer
    from tvq.metrics import psnr
    from tvq.render import RenderOptions, render_image

    device = runtime.device()
    model = open_model(path)
    K, c2w = _camera(model, size)
    renderer = FastRenderer(model.field, model.background, half=half)
    row_path = "fused" if renderer.fused else "rounds"
    row = {"name": name, "file": str(path), "file_bytes": path.stat().st_size, "kind": model.field.grid.kind,
           "fast_path": row_path,
           "bits": model.field.grid.bits, "levels": list(model.field.grid.levels), "size": size, "lods": []}
    for lod in range(model.lods):
        fast_out = renderer.render(K, c2w, size, size, lod)
        entry = {"lod": lod, "level": model.field.grid.levels[lod],
                 "bytes": model.header["lods"][lod]["end"] if model.header else None,
                 "fast": time_ms(lambda: renderer.render(K, c2w, size, size, lod), device, warmup, iters),
                 "fast_samples": fast_out["stats"]["samples"], "fast_rounds": fast_out["stats"]["rounds"],
                 "fast_samples_per_ray": fast_out["stats"]["samples"] / (size * size)}
        for variant, kwargs in _variants(device, half):  # the other inference paths, for comparison
            other = FastRenderer(model.field, model.background, **kwargs)
            other_out = other.render(K, c2w, size, size, lod)
            entry[variant] = dict(time_ms(lambda: other.render(K, c2w, size, size, lod), device, warmup, iters),
                                  samples=other_out["stats"]["samples"], rounds=other_out["stats"]["rounds"],
                                  psnr_vs_fast=psnr(other_out["color"], fast_out["color"]))
        if reference:
            options = RenderOptions(early_stop=True)
            ref = render_image(model.field, K, c2w, size, size, lod, model.background, options)
            entry["render_image"] = time_ms(
                lambda: render_image(model.field, K, c2w, size, size, lod, model.background, options), device,
                min(warmup, 1), max(1, min(iters, 3)))
            entry["speedup"] = entry["render_image"]["median_ms"] / entry["fast"]["median_ms"]
            entry["psnr_fast_vs_render_image"] = psnr(fast_out["color"], ref["color"])
            entry["max_abs_diff"] = float((fast_out["color"] - ref["color"]).abs().max())
        others = "".join(f", {v} {entry[v]['median_ms']:.1f} ms" for v, _ in _variants(device, half))
        print(f"{name} LOD {lod}: fast ({row_path}) {entry['fast']['median_ms']:.1f} ms{others}"
              + (f", render_image {entry['render_image']['median_ms']:.1f} ms ({entry['speedup']:.1f}x), "
                 f"PSNR between them {entry['psnr_fast_vs_render_image']:.1f} dB" if reference else ""),
              file=sys.stderr, flush=True)
        row["lods"].append(entry)
    return row


def bench_viewer(path: Path, size: int, iters: int, warmup: int, target_fps: float) -> dict:
    """Frame time of the headless viewer at size x size: fixed scale 1, then dynamic resolution."""
    from tvq.apps.viewer.state import ViewerState
    from tvq.apps.viewer.window import ViewerWindow

    state = ViewerState(path, size=(size, size))
    result = {"size": size}
    with ViewerWindow(state, headless=True, panel=True) as window:
        times, parts = [], []
        for k in range(warmup + iters):
            t0 = time.perf_counter()
            window.frame(dt=1 / 30, read_back=False)
            if k >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
                parts.append(dict(window.timings))
        times.sort()
        result["fixed_scale"] = {"median_ms": times[len(times) // 2], "min_ms": times[0], "fps": 1e3 / times[len(times) // 2],
                                 "frames": len(times),
                                 "parts_median_ms": {key: statistics.median(p[key] for p in parts) for key in parts[0]}}
        state.set_dynamic(True, target_fps)
        for _ in range(max(12, 2 * iters)):  # settle
            window.frame(dt=1 / 30, read_back=False)
        times = []
        for _ in range(max(iters, 5)):
            t0 = time.perf_counter()
            window.frame(dt=1 / 30, read_back=False)
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        result["dynamic"] = {"target_fps": target_fps, "median_ms": times[len(times) // 2],
                             "fps": 1e3 / times[len(times) // 2], "render_scale": state.render_scale,
                             "render_size": list(state.render_size()), "frames": len(times)}
    parts = ", ".join(f"{k} {v:.1f}" for k, v in result["fixed_scale"]["parts_median_ms"].items())
    print(f"viewer {size}x{size}: {result['fixed_scale']['median_ms']:.1f} ms/frame at scale 1 ({parts} ms); dynamic "
          f"({target_fps} FPS target): {result['dynamic']['fps']:.1f} FPS at scale {state.render_scale:.2f}",
          file=sys.stderr, flush=True)
    return result


def parse_model(text: str) -> tuple[str, Path]:
    """NAME=PATH (or PATH, named after its folder)."""
    name, sep, path = text.partition("=")
    if not sep:
        path, name = name, Path(name).parent.name or Path(name).stem
    return name, Path(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="NAME=PATH of .tvq files (or checkpoints)")
    parser.add_argument("--size", type=int, default=800, help="image width and height")
    parser.add_argument("--iters", type=int, default=10, help="timed frames per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default=None, help="auto | cuda | cpu")
    parser.add_argument("--no-reference", action="store_true", help="skip render_image (slow on the CPU)")
    parser.add_argument("--half", action="store_true", help="the fast path's MLP in float16 (CUDA)")
    parser.add_argument("--no-viewer", action="store_true", help="skip the headless viewer timing")
    parser.add_argument("--viewer-model", default=None, help="NAME of the model the viewer opens (default: the last)")
    parser.add_argument("--target-fps", type=float, default=30.0, help="dynamic resolution's target")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    info = runtime.init(args.arch)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(runtime.device())
    results = {"device": device_name(device), "arch": info.arch, "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "size": args.size, "iters": args.iters,
               "half": args.half, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "command": "python -m benchmarks.render " + " ".join(argv if argv is not None else sys.argv[1:]),
               "models": [], "viewer": None}
    failed = False
    models = [parse_model(m) for m in args.models]
    for name, path in models:
        try:
            results["models"].append(bench_model(name, path, args.size, args.iters, args.warmup,
                                                 not args.no_reference, args.half))
        except Exception:
            failed = True
            results["models"].append({"name": name, "file": str(path), "error": traceback.format_exc()})
            traceback.print_exc()
        write_json(args.out, results)
    if not args.no_viewer:
        try:
            chosen = dict(models).get(args.viewer_model, models[-1][1]) if args.viewer_model else models[-1][1]
            results["viewer"] = bench_viewer(chosen, args.size, args.iters, args.warmup, args.target_fps)
            results["viewer"]["file"] = str(chosen)
        except TvqError as err:  # no Vulkan here: say so in the JSON
            results["viewer"] = {"skipped": str(err)}
        except Exception:
            failed = True
            results["viewer"] = {"error": traceback.format_exc()}
            traceback.print_exc()
    write_json(args.out, results)
    print(json.dumps({m["name"]: [round(l["fast"]["median_ms"], 2) for l in m.get("lods", [])]
                      for m in results["models"]}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

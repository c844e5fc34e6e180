"""The .tvq file of trained models: bytes per component with and without entropy coding, each codec's
size per chunk kind, LOD byte ends, decode and first-LOD render times, and PSNR of the decoded file
against its checkpoint.

    python -m benchmarks.codec --checkpoints runs/lego-bits0/checkpoint.pt runs/lego-bits6/checkpoint.pt \
        --scene .device/data/lego --out benchmarks/results/codec-h200.json

For a VQ model it also reports the bytes the same octree takes as an uncompressed (bits 0) file in the raw
layout (fp16 features per vertex, the same structure, MLP and header) and the ratio to the VQ file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._timing import device_name, write_json
from tvq import codec, runtime
from tvq.codec.container import CHUNK_HEAD
from tvq.codec.model import mlp_bytes
from tvq.data import load_scene
from tvq.eval import evaluate
from tvq.export import export_checkpoint, open_model
from tvq.render import RenderOptions, render_image


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def codec_sizes(report: dict) -> dict:
    """Per chunk kind: total stored bytes if every chunk of that kind used each codec tried (raw included),
    and what the writer chose."""
    out: dict[str, dict] = {}
    for row in report["chunks"]:
        kind = out.setdefault(row["kind"], {"chunks": 0, "chosen": 0})
        kind["chunks"] += 1
        kind["chosen"] += row["bytes"] - CHUNK_HEAD.size
        for name, size in row.get("tried", {}).items():
            kind[name] = kind.get(name, 0) + size
    return out


def raw_layout_bytes(header: dict) -> int:
    """Bytes of an uncompressed (bits 0) file of this model's octree in the raw layout (fp16 decoder)."""
    m = header["model"]
    chunks = 1 + (m["levels"][-1]) + len(m["levels"])  # mlp, structure per level, features per level
    payload = mlp_bytes(dict(m, decoder=dict(m["decoder"], weights="fp16"))) + sum(m["counts"]["cells"][:-1]) + sum(m["counts"]["vertices"]) * m["feature_dim"] * 2
    return header["chunks"][0]["offset"] + chunks * CHUNK_HEAD.size + payload


def bench_checkpoint(path: Path, scene, out_dir: Path, repeats: int, max_views: int | None) -> dict:
    files = {"entropy": out_dir / f"{path.parent.name}.tvq", "raw": out_dir / f"{path.parent.name}-raw.tvq"}
    t0 = time.perf_counter()
    report = export_checkpoint(path, files["entropy"])
    export_seconds = time.perf_counter() - t0
    raw_report = export_checkpoint(path, files["raw"], entropy=False)
    data = files["entropy"].read_bytes()
    header = codec.read(data).header
    decode_seconds = _median_seconds(lambda: codec.read(data), repeats)
    first_end = header["lods"][0]["end"]
    cams = header["cameras"]
    K = torch.tensor(cams["K"], dtype=torch.float64)
    pose = torch.tensor(cams["poses"][0], dtype=torch.float64)
    device = runtime.device()
    background = torch.tensor(header["background"], dtype=torch.float32, device=device)

    def first_lod() -> None:
        field = codec.read(data, max_bytes=first_end, device=device).field
        render_image(field, K, pose, cams["width"], cams["height"], 0, background, RenderOptions(early_stop=True))

    first_lod()  # compile the kernels once
    first_lod_seconds = _median_seconds(first_lod, repeats)
    views = scene.split("test")[:max_views] if max_views else scene.split("test")
    from_file = evaluate(open_model(files["entropy"]).field, views, background)
    from_ckpt = evaluate(open_model(path).field, views, background)
    row = {
        "checkpoint": str(path), "model": header["model"], "file_bytes": report["file_bytes"],
        "raw_file_bytes": raw_report["file_bytes"], "components": report["components"],
        "raw_components": raw_report["components"],
        "entropy_gain": {k: 1 - report["components"][k] / v for k, v in raw_report["components"].items() if v},
        "codecs": codec_sizes(report), "lods": header["lods"], "first_lod_bytes": first_end,
        "export_seconds": export_seconds, "decode_seconds": decode_seconds,
        "decode_render_first_lod_seconds": first_lod_seconds, "render_size": [cams["width"], cams["height"]],
        "psnr_file": [r["psnr"] for r in from_file], "psnr_checkpoint": [r["psnr"] for r in from_ckpt],
        "views": len(views),
    }
    if header["model"]["kind"] != "raw":
        row["bits0_raw_layout_bytes"] = raw_layout_bytes(header)
        row["ratio_to_bits0_raw_layout"] = row["bits0_raw_layout_bytes"] / report["file_bytes"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--scene", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--downscale", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-views", type=int, default=None)
    parser.add_argument("--arch", default=None)
    args = parser.parse_args(argv)
    info = runtime.init(args.arch)
    scene = load_scene(Path(args.scene), downscale=args.downscale)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.checkpoints:
            row = bench_checkpoint(Path(path), scene, Path(tmp), args.repeats, args.max_views)
            rows.append(row)
            print(f"{path}: {row['file_bytes']:,} bytes ({row['raw_file_bytes']:,} raw), first LOD "
                  f"{row['first_lod_bytes']:,} bytes, decode {row['decode_seconds'] * 1e3:.0f} ms, first LOD "
                  f"decode+render {row['decode_render_first_lod_seconds'] * 1e3:.0f} ms, PSNR file/checkpoint "
                  f"{row['psnr_file'][-1]:.3f}/{row['psnr_checkpoint'][-1]:.3f}", flush=True)
    raws = [r for r in rows if r["model"]["kind"] == "raw"]
    for r in rows:
        if r["model"]["kind"] == "vq" and raws:
            r["ratio_to_trained_bits0_file"] = raws[0]["file_bytes"] / r["file_bytes"]
    write_json(args.out, {"device": device_name(str(runtime.device())), "arch": info.arch,
                          "command": "python -m benchmarks.codec " + " ".join(argv or sys.argv[1:]),
                          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "models": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

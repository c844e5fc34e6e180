"""A short training run and the codec benchmark of its checkpoint in one process (one kernel compilation):
the decoded file against its checkpoint (PSNR per LOD on the test views), decode times, bytes.

    python -m benchmarks.codec_quick --scene .device/data/lego --bits 6 --minutes 0.75 --out OUT_DIR

Writes OUT_DIR/train.json (the run's metrics.json) and OUT_DIR/codec.json (``benchmarks.codec``'s row).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks._timing import device_name, write_json
from tvq import runtime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", required=True)
    parser.add_argument("--bits", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=0.75)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default=None)
    args = parser.parse_args(argv)
    info = runtime.init(args.arch)
    from benchmarks.codec import bench_checkpoint
    from tvq.data import load_scene
    from tvq.job import train_scene
    from tvq.train import TrainConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / f"{Path(args.scene).name}-bits{args.bits}"
        metrics = train_scene(Path(args.scene), run, TrainConfig(bits=args.bits, minutes=args.minutes, eval_every=0),
                              arch=args.arch)
        write_json(out / "train.json", metrics)
        scene = load_scene(Path(args.scene))
        row = bench_checkpoint(run / "checkpoint.pt", scene, Path(tmp), args.repeats, None)
    row.update(device=device_name(str(runtime.device())), arch=info.arch,
               command="python -m benchmarks.codec_quick " + " ".join(argv if argv is not None else sys.argv[1:]))
    write_json(out / "codec.json", row)
    print({k: row[k] for k in ("file_bytes", "first_lod_bytes", "psnr_file", "psnr_checkpoint", "decode_seconds",
                               "decode_render_first_lod_seconds") if k in row}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

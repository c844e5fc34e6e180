"""The kernel tour: every Taichi kernel of tvq, from its math to its code, checked against its torch twin.

One step per kernel, each a percent-format notebook (``# %%`` cells) that also runs as a plain script:

    octree      step1_octree.py      tvq/kernels/octree_build.py   octree from points
    carve       step2_carve.py       tvq/kernels/carve.py          visual-hull carving
    raymarch    step3_raymarch.py    tvq/kernels/raymarch.py       packed samples along rays
    gather      step4_gather.py      tvq/kernels/gather.py         trilinear gather over levels
    codebook    step5_codebook.py    tvq/kernels/codebook.py       straight-through VQ lookup
    composite   step6_composite.py   tvq/kernels/composite.py      alpha compositing
    importance  step7_importance.py  tvq/kernels/importance.py     per-vertex importance
    train       step8_train.py       all of them: a tiny model, its loss, its .tvq file LOD by LOD

``run_tour(step, out)`` runs one step (by name or number) or all of them, writes each step's pictures
and ``timings.json`` (the Taichi kernel and its twin per kernel, measured in the run) into ``out`` and
prints the timing table. Every step raises ``AssertionError`` when a kernel disagrees with its twin or
fails its gradcheck. On a machine with CUDA, the CPU numbers come from a second process that runs
Taichi on its CPU backend (Taichi runs on one backend per process).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("octree", "carve", "raymarch", "gather", "codebook", "composite", "importance", "train")

MODULES = {
    "octree": "step1_octree",
    "carve": "step2_carve",
    "raymarch": "step3_raymarch",
    "gather": "step4_gather",
    "codebook": "step5_codebook",
    "composite": "step6_composite",
    "importance": "step7_importance",
    "train": "step8_train",
}

TITLES = {
    "octree": "an octree from points",
    "carve": "visual-hull carving",
    "raymarch": "ray marching through the octree",
    "gather": "the trilinear gather over levels",
    "codebook": "the straight-through codebook lookup",
    "composite": "alpha compositing",
    "importance": "importance",
    "train": "all of it together: a tiny model and its file",
}

# the pictures each step writes into the out folder
PICTURES = {
    "octree": ("octree_levels.png",),
    "carve": ("carve_hull.png",),
    "raymarch": ("raymarch_samples.png",),
    "gather": ("gather_weights.png",),
    "codebook": ("codebook_straight_through.png",),
    "composite": ("composite_ray.png",),
    "importance": ("importance_slice.png",),
    "train": ("train_loss.png", "train_lods.png"),
}

# the kernel each step times (the last step times none)
KERNELS = {
    "octree": "octree_build",
    "carve": "carve",
    "raymarch": "raymarch",
    "gather": "gather",
    "codebook": "codebook",
    "composite": "composite",
    "importance": "importance",
}

DEFAULT_OUT = Path("tvq-tour")


def resolve_step(step: str | int) -> str:
    """A step's name from its name, its number (1..8) or its module name."""
    from tvq.errors import TvqError

    key = str(step).strip().lower()
    if key.isdigit() and 1 <= int(key) <= len(STEPS):
        return STEPS[int(key) - 1]
    for name, module in MODULES.items():
        if key in (name, module, module + ".py"):
            return name
    raise TvqError(f"unknown tour step {step!r}: choose one of {', '.join(STEPS)} (or 1..{len(STEPS)})")


def step_module(name: str):
    return importlib.import_module(f"{__name__}.{MODULES[resolve_step(name)]}")


def run_tour(step: str | None = None, out: Path = DEFAULT_OUT, log=print) -> dict:
    """Run one step (``step``: a name of ``STEPS`` or its number) or, with None, every step in order.

    Pictures and ``timings.json`` go to ``out``; returns ``{"arch", "seconds", "steps": {name: result},
    "timings"}``. Raises AssertionError at the first kernel that disagrees with its torch twin."""
    from tvq import runtime

    info = runtime.ensure()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = STEPS if step is None else (resolve_step(step),)
    start = time.perf_counter()
    results = {}
    for name in names:
        log(f"\n== step {STEPS.index(name) + 1}: {TITLES[name]} ({MODULES[name]}.py) ==")
        results[name] = step_module(name).run(out, log)
        log(f"   step {name}: {results[name]['seconds']:.1f} s")
    timings = _timings(results, info)
    timed = [n for n in names if n in KERNELS]
    if info.arch != "cpu" and timed:
        log("\nCPU timings: the same measurements with Taichi on its CPU backend, in a second process")
        cpu = _cpu_timings(timed)
        timings["runs"].update(cpu["runs"])
        for kernel, entry in cpu["kernels"].items():
            timings["kernels"].setdefault(kernel, {"size": entry["size"]}).update(
                {k: v for k, v in entry.items() if k != "size"})
    timings = _merge_previous(out / "timings.json", timings)
    from tvq.atomic import write_json

    write_json(out / "timings.json", timings)
    log("\n" + format_timings(timings))
    seconds = time.perf_counter() - start
    log(f"\ntour: {len(names)} step(s) in {seconds:.1f} s on {info.arch}; pictures and timings.json in {out}")
    return {"arch": info.arch, "seconds": seconds, "steps": results, "timings": timings}


def _run_info(info, kernels: dict) -> dict:
    import platform

    import taichi as ti
    import torch

    if info.arch == "cuda":
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"
    threads = sorted({e[info.arch]["torch"]["threads"] for e in kernels.values()
                      if "threads" in e.get(info.arch, {}).get("torch", {})})
    return {"device": device, "debug": info.debug, "taichi": ".".join(map(str, ti.__version__)),
            "torch": torch.__version__, "torch_threads": threads[0] if len(threads) == 1 else threads,
            "warmup_calls": _common().WARMUP,
            "timed_calls": _common().CALLS, "statistic": "median"}


def _common():
    from . import common

    return common


def _timings(results: dict, info) -> dict:
    kernels = {}
    for result in results.values():
        for kernel, entry in result.get("timings", {}).items():
            kernels.setdefault(kernel, {"size": entry["size"]}).update({k: v for k, v in entry.items() if k != "size"})
    return {"runs": {info.arch: _run_info(info, kernels)}, "kernels": kernels}


def _merge_previous(path: Path, timings: dict) -> dict:
    """Keep the entries of kernels this run did not time from an earlier ``timings.json`` in ``out``."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return timings
    if not isinstance(previous, dict) or not isinstance(previous.get("kernels"), dict):
        return timings
    kernels = {k: v for k, v in previous["kernels"].items() if k not in timings["kernels"]}
    kernels.update(timings["kernels"])
    order = list(KERNELS.values())
    kernels = dict(sorted(kernels.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    runs = previous.get("runs") if isinstance(previous.get("runs"), dict) else {}
    runs = {**runs, **timings["runs"]}
    return {"runs": runs, "kernels": kernels}


def _cpu_timings(names) -> dict:
    """Each step's ``measure`` in a child process with Taichi on the CPU backend."""
    with tempfile.TemporaryDirectory(prefix="tvq-tour-cpu-") as tmp:
        result = Path(tmp) / "timings.json"
        env = {**os.environ, "TVQ_ARCH": "cpu", "CUDA_VISIBLE_DEVICES": ""}
        code = f"from {__name__} import measure_main; measure_main()"
        proc = subprocess.run([sys.executable, "-c", code, str(result), *names], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the CPU timing process failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
        return json.loads(result.read_text())


def measure_main(argv=None) -> None:
    """``python -c 'from tvq.apps.tour import measure_main; measure_main()' OUT.json STEP...``: the named
    steps' timings on this process's Taichi backend, as JSON."""
    from tvq import runtime

    argv = sys.argv[1:] if argv is None else argv
    path, names = Path(argv[0]), [resolve_step(n) for n in argv[1:]]
    info = runtime.ensure()
    Step = _common().Step
    results = {}
    with tempfile.TemporaryDirectory(prefix="tvq-tour-measure-") as tmp:
        for name in names:
            with Step(name, Path(tmp), log=lambda *a: None) as step:
                step_module(name).measure(step)
                results[name] = step.result()
    path.write_text(json.dumps(_timings(results, info), indent=2))


def format_timings(timings: dict) -> str:
    """The timing table: per kernel and device, Taichi and the torch twin, forward and forward+backward."""
    table = _common().table
    rows = []
    for kernel, entry in timings["kernels"].items():
        for arch in ("cpu", "cuda"):
            if arch not in entry:
                continue
            t, w = entry[arch]["taichi"], entry[arch].get("torch", {})
            cell = lambda d, k: f"{d[k]:.2f}" if k in d else "-"  # noqa: E731
            ratio = lambda k: f"{w[k] / t[k]:.1f}x" if k in w and k in t and t[k] > 0 else "-"  # noqa: E731
            rows.append((kernel, arch, entry["size"], cell(t, "forward_ms"), cell(t, "forward_backward_ms"),
                         cell(w, "forward_ms"), cell(w, "forward_backward_ms"), ratio("forward_ms"),
                         ratio("forward_backward_ms")))
    lines = ["timings (ms, median of the timed calls; torch twin / Taichi = the last two columns)"]
    for arch, run in timings["runs"].items():
        note = " (Taichi debug mode: bounds checks, no fast math)" if run.get("debug") else ""
        lines.append(f"  {arch}: {run['device']}, Taichi {run['taichi']}, torch {run['torch']} with "
                     f"{run['torch_threads']} thread(s), {run['warmup_calls']} warm-up + {run['timed_calls']} timed "
                     f"calls{note}")
    lines.append(table(["kernel", "device", "size", "Taichi fwd", "fwd+bwd", "twin fwd", "fwd+bwd", "ratio fwd",
                        "fwd+bwd"], rows))
    return "\n".join(lines)

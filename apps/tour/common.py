"""What every step of the kernel tour shares: checks against the twin, gradcheck, timing, figures.

A ``Step`` collects what one step measured (its checks, pictures and timings) and returns it as the
step's result. Every check raises ``AssertionError`` when the Taichi kernel and its torch twin disagree,
so the tour stops at the first kernel that drifted; ``python -O`` does not switch the checks off (they
are not ``assert`` statements).

Figures are ``matplotlib.figure.Figure`` objects with their own Agg canvas: no pyplot, no global state,
nothing opens a window.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from tvq import runtime

WARMUP = 1  # calls before the timed ones (compilation, caches)
CALLS = 3  # timed calls; the table shows their median
DPI = 72  # pictures stay small (the docs keep them)


def check(condition: bool, message: str) -> None:
    """Raise AssertionError(message) unless ``condition`` (not an ``assert``: ``python -O`` keeps it)."""
    if not condition:
        raise AssertionError(message)


def table(headers, rows, formats=None) -> str:
    """A plain-text table: right-aligned columns, ``formats`` per column ("{:.4f}" etc., default str)."""
    formats = formats or [None] * len(headers)
    cells = [[(f.format(v) if f and not isinstance(v, str) else str(v)) for v, f in zip(row, formats)] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def figure(width: float, height: float):
    """A Figure (inches) with its own Agg canvas and a constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def sync() -> None:
    runtime.sync()


def median_ms(fn: Callable[[], object], warmup: int = WARMUP, calls: int = CALLS) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``calls`` calls after ``warmup`` calls, with the
    device synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def backward_of(fn: Callable[[], object], inputs: list[torch.Tensor], seed: int = 0) -> Callable[[], object]:
    """A callable that runs ``fn()`` (a tensor or a tuple of tensors) and its backward with fixed random
    cotangents into ``inputs``: forward + backward, as a training step needs them."""
    cots: list[torch.Tensor] = []

    def run():
        outs = fn()
        outs = [outs] if isinstance(outs, torch.Tensor) else [o for o in outs if o is not None and o.requires_grad]
        if not cots:
            g = torch.Generator().manual_seed(seed)
            cots.extend(torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs)
        return torch.autograd.grad(outs, inputs, cots)

    return run


class Step:
    """One step of the tour: ``out`` folder, ``log`` function, and what the step checked and measured.

    Used as a context manager, it runs the step with one torch intra-op thread: the tour's tensors are
    tiny, and at these sizes torch's threads cost more in synchronisation than they gain (on a busy
    machine a hundred times more). The timings say so (``threads`` of the torch entries); the thread
    count torch had before is restored at the end."""

    def __init__(self, name: str, out: Path, log=print):
        self.name, self.out, self.log = name, Path(out), log
        self.out.mkdir(parents=True, exist_ok=True)
        self.checks: dict[str, float | bool] = {}
        self.pictures: list[str] = []
        self.timings: dict[str, dict] = {}
        self.start = time.perf_counter()
        self.torch_threads = torch.get_num_threads()

    def __enter__(self) -> "Step":
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.torch_threads)

    # -- the twin comparison --

    def agree(self, what: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float = 0.0) -> float:
        """Check that the kernel's ``got`` matches the twin's ``want`` (|got - want| <= atol + rtol |want|
        everywhere, equal shapes, NaN where and only where the twin has NaN); log and record the largest
        difference."""
        got = got.detach().cpu().double()
        want = want.detach().cpu().double()
        check(got.shape == want.shape, f"{self.name}: {what}: Taichi gives shape {tuple(got.shape)}, "
                                       f"the twin {tuple(want.shape)}")
        err = float((got - want).abs().nan_to_num(0.0).max()) if got.numel() else 0.0
        ok = bool(torch.isclose(got, want, atol=atol, rtol=rtol, equal_nan=True).all())
        self.log(f"  {what:<46} max |difference| {err:.2e} (tolerance {atol:g} + {rtol:g}|twin|)  "
                 f"{'agree' if ok else 'DIFFER'}")
        check(ok, f"{self.name}: {what}: the Taichi kernel and its torch twin disagree (max |difference| {err:.3e}, "
                  f"tolerance {atol:g} + {rtol:g}|twin|)")
        self.checks[what] = err
        return err

    def equal(self, what: str, got: torch.Tensor, want: torch.Tensor) -> None:
        """Check that integer outputs (codes, counts, rows) are identical."""
        got, want = got.detach().cpu(), want.detach().cpu()
        ok = got.shape == want.shape and bool(torch.equal(got, want))
        self.log(f"  {what:<46} {'identical' if ok else 'DIFFER'} ({got.numel()} values)")
        check(ok, f"{self.name}: {what}: the Taichi kernel and its torch twin give different values")
        self.checks[what] = True

    def holds(self, what: str, condition: bool, detail: str = "") -> None:
        """Check a property that is not a comparison (e.g. no surface point was carved away)."""
        self.log(f"  {what:<46} {'holds' if condition else 'FAILS'}{'  ' + detail if detail else ''}")
        check(condition, f"{self.name}: {what}: fails{' (' + detail + ')' if detail else ''}")
        self.checks[what] = True

    def gradcheck(self, what: str, fn, inputs, **kwargs) -> None:
        """torch.autograd.gradcheck of ``fn`` at ``inputs`` (float64): the hand-written backward against
        finite differences of the forward."""
        from torch.autograd.gradcheck import GradcheckError

        start = time.perf_counter()
        try:
            torch.autograd.gradcheck(fn, inputs, **kwargs)
        except GradcheckError as err:
            self.log(f"  gradcheck {what:<34} FAILS")
            raise AssertionError(f"{self.name}: gradcheck of {what} fails: {err}") from err
        self.log(f"  gradcheck {what:<34} passes ({sum(x.numel() for x in inputs)} inputs, "
                 f"{time.perf_counter() - start:.2f} s)")
        self.checks[f"gradcheck {what}"] = True

    # -- pictures and timings --

    def picture(self, fig, filename: str) -> Path:
        path = self.out / filename
        fig.savefig(path, dpi=DPI)
        self.pictures.append(filename)
        self.log(f"  picture: {path}")
        return path

    def time(self, kernel: str, size: str, taichi: Callable, twin: Callable | None,
             taichi_backward: Callable | None = None, twin_backward: Callable | None = None,
             twin_note: str = "") -> dict:
        """Median times of the Taichi op and its twin (forward, and forward + backward when given) on the
        runtime's device, torch with the step's thread count. ``twin=None`` (with ``twin_note``) where the
        twin cannot run on this device."""
        arch = runtime.ensure().arch
        entry: dict = {"taichi": {"forward_ms": median_ms(taichi)}}
        if taichi_backward is not None:
            entry["taichi"]["forward_backward_ms"] = median_ms(taichi_backward)
        if twin is not None:
            entry["torch"] = {"forward_ms": median_ms(twin), "threads": torch.get_num_threads()}
            if twin_backward is not None:
                entry["torch"]["forward_backward_ms"] = median_ms(twin_backward)
        else:
            entry["torch"] = {"note": twin_note}
        record = self.timings.setdefault(kernel, {"size": size})
        record[arch] = entry
        t, w = entry["taichi"], entry["torch"]
        fmt = lambda d, k: f"{d[k]:.2f}" if k in d else "-"  # noqa: E731
        self.log(f"  timing {kernel} ({size}, {arch}), forward / forward+backward: Taichi {fmt(t, 'forward_ms')} / "
                 f"{fmt(t, 'forward_backward_ms')} ms, torch twin {fmt(w, 'forward_ms')} / "
                 f"{fmt(w, 'forward_backward_ms')} ms")
        return entry

    def result(self, **extra) -> dict:
        return {"step": self.name, "seconds": time.perf_counter() - self.start, "checks": self.checks,
                "pictures": self.pictures, "timings": self.timings, **extra}


def on_runtime_device(*tensors: torch.Tensor):
    """The tensors moved to the Taichi backend's torch device."""
    device = runtime.device()
    moved = tuple(t.to(device) for t in tensors)
    return moved if len(moved) > 1 else moved[0]

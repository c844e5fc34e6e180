"""Mutation fuzzing of the .tvq reader: every mutated file must decode or raise a one-line FormatError.

    python -m benchmarks.fuzz_codec --file MODEL.tvq --mutations 100000 --seed 0 \
        --out benchmarks/results/fuzz-codec.json
    python -m benchmarks.fuzz_codec --mutations 5000 --out /tmp/fuzz.json   # on a tiny model trained here
    python -m benchmarks.fuzz_codec --file MODEL.tvq --seed 0 --case 1234   # rerun one case, with its traceback

Each case applies one random mutation to the file's bytes and calls ``tvq.codec.read`` on the result:

- byte level: bit flips, byte overwrites (random, 0x00/0xFF runs, boundary integers), truncations,
  insertions and deletions of byte runs, duplicated ranges;
- the same with every checksum made right again afterwards (``+crc``), so that the damage reaches the
  checks behind the CRCs: the header JSON, the chunk index, the model description, the entropy decoders;
- structural, rebuilt with consistent offsets, file size, LOD table and CRCs: a header field set to an
  odd value (``header-field``), a chunk's stored bytes changed (``chunk-payload``), chunks dropped,
  duplicated or swapped (``chunks``).

Outcomes: ``decoded`` (a model of the complete LODs, which is then evaluated at a few points),
``format_error``, ``truncated`` (``Truncated``, a FormatError subclass) or ``other`` (anything else: a
reader bug, listed with its traceback). A FormatError whose message spans several lines is a failure too.
Case i draws from ``numpy.random.default_rng([seed, i])``, so ``--case i`` reproduces it alone. The JSON
counts outcomes overall and per mutation, the FormatError messages (numbers blanked) that fired most, and
lists the first other exceptions with their mutation and traceback; ``timing.read_ms`` is the time spent in
``tvq.codec.read`` alone, ``cases_per_s`` counts mutating and checking too. The exit code is 1 when any case
failed.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import re
import resource
import signal
import statistics
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from tvq.atomic import write_json

OUTCOMES = ("decoded", "format_error", "truncated", "other")
BYTE_MUTATIONS = ("bitflip", "overwrite", "truncate", "insert", "delete", "duplicate")
# (name, weight): byte-level damage most often, as a damaged download or disk gives it
MUTATIONS = [(m, 10) for m in BYTE_MUTATIONS] + [(m + "+crc", 4) for m in BYTE_MUTATIONS] + [
    ("header-field", 16), ("chunk-payload", 8), ("chunks", 3)]
BOUNDARY_INTS = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
ODD_VALUES = [0, 1, -1, 2, 3, 7, 8, 255, 256, 4095, 4096, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
              1 << 53, 1 << 63, -(1 << 63), 10 ** 30, 0.5, -0.0, 1e308, float("nan"), float("inf"), "", "raw", "vq",
              "hash", "lra", "mlp", "extra", "x" * 1000, None, True, False, [], {}, [0], [1, 2, 3], {"a": 1},
              list(range(64))]
KEEP_OTHER = 10  # other exceptions listed in full
KEEP_EXAMPLES = 5


class CaseTimeout(BaseException):
    """A read that ran past --case-timeout (a BaseException: no ``except Exception`` in the reader hides it)."""


# ---- the file's parts ----------------------------------------------------------------------------------


def split(data: bytes):
    """(header without chunks/lods/sizes, [(index entry, tag, stored bytes)]) of a valid file."""
    from tvq.codec.container import CHUNK_HEAD, parse_header

    header, _ = parse_header(data)
    parts = []
    for e in header["chunks"]:
        start = e["offset"] + CHUNK_HEAD.size
        parts.append((dict(e), CHUNK_HEAD.unpack_from(data, e["offset"])[0], data[start:start + e["length"]]))
    return {k: v for k, v in header.items() if k not in ("chunks", "lods", "file_bytes", "chunk_bytes")}, parts


def assemble(base: dict, parts, edit=None) -> bytes:
    """A file of ``parts`` by the container's layout (offsets, lengths, LOD table, file size and every CRC
    consistent), with ``edit(header)`` applied to the finished header."""
    from tvq.codec import container, entropy

    codec_id = {name: c for c, name in entropy.NAMES.items()}
    head, crc = container.CHUNK_HEAD, container.CRC
    offset = 0  # the stored index counts from the first chunk
    entries = []
    for e, _, stored in parts:
        entries.append(dict(e, offset=offset, length=len(stored)))
        offset += head.size + len(stored)
    levels = base.get("model", {}).get("levels", [])
    ends = []
    for lod, level in enumerate(levels if isinstance(levels, list) else []):
        needed = [e["offset"] + head.size + e["length"] for e in entries
                  if e.get("level") is None or (isinstance(level, int) and isinstance(e.get("level"), int)
                                                and e["level"] <= level)]
        ends.append({"lod": lod, "level": level, "end": max(needed, default=offset)})
    header = dict(copy.deepcopy(base), chunks=entries, lods=ends, chunk_bytes=offset)
    if edit is not None:
        edit(header)
    if isinstance(header.get("chunks"), list):
        header["chunks"] = [[e.get(k) for k in container.INDEX_FIELDS] if isinstance(e, dict) else e
                            for e in header["chunks"]]
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    out = [container.PREAMBLE.pack(container.MAGIC, container.FORMAT_VERSION, 0, len(text)), text,
           crc.pack(zlib.crc32(text))]
    for e, tag, stored in parts:
        level = e.get("level")
        level = level if isinstance(level, int) and 0 <= level < 255 else 255
        codec = codec_id.get(e.get("codec"), 0)
        out.append(head.pack(tag, level, codec, 0, len(stored), zlib.crc32(stored)))
        out.append(stored)
    return b"".join(out)


def resign(data: bytearray) -> bytearray:
    """Make the header CRC and every chunk CRC right again, wherever the (damaged) lengths put them."""
    from tvq.codec import container

    pre, head, crc = container.PREAMBLE, container.CHUNK_HEAD, container.CRC
    if len(data) < pre.size:
        return data
    length = pre.unpack_from(data, 0)[3]
    pos = pre.size + length
    if pos + crc.size > len(data):
        return data
    crc.pack_into(data, pos, zlib.crc32(data[pre.size:pos]))
    pos += crc.size
    while pos + head.size <= len(data):
        tag, level, codec, reserved, n, _ = head.unpack_from(data, pos)
        end = pos + head.size + n
        if end > len(data):
            break
        head.pack_into(data, pos, tag, level, codec, reserved, n, zlib.crc32(data[pos + head.size:end]))
        pos = end
    return data


# ---- mutations -----------------------------------------------------------------------------------------


def _run_length(rng, most: int = 64) -> int:
    return int(min(rng.geometric(0.15), most))


def byte_mutation(kind: str, data: bytes, rng) -> tuple[bytearray, dict]:
    out = bytearray(data)
    n = len(out)
    if kind == "bitflip":
        bits = rng.integers(0, n * 8, int(rng.choice([1, 1, 1, 2, 3, 8])))
        for b in bits.tolist():
            out[b // 8] ^= 1 << (b % 8)
        return out, {"bits": sorted(bits.tolist())}
    if kind == "overwrite":
        at = int(rng.integers(0, n))
        style = str(rng.choice(["random", "zeros", "ones", "int"]))
        if style == "int":
            value = bytes(struct.pack("<I", int(rng.choice(BOUNDARY_INTS))))[:n - at]
        else:
            size = min(_run_length(rng, 16), n - at)
            value = {"random": rng.integers(0, 256, size, dtype=np.uint8).tobytes(), "zeros": bytes(size),
                     "ones": b"\xff" * size}[style]
        out[at:at + len(value)] = value
        return out, {"at": at, "bytes": value.hex()[:64], "style": style}
    if kind == "truncate":
        at = int(rng.integers(0, n))
        return out[:at], {"at": at}
    if kind == "insert":
        at, size = int(rng.integers(0, n + 1)), _run_length(rng)
        out[at:at] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        return out, {"at": at, "size": size}
    if kind == "delete":
        at = int(rng.integers(0, n))
        size = min(_run_length(rng), n - at)
        del out[at:at + size]
        return out, {"at": at, "size": size}
    if kind == "duplicate":
        start = int(rng.integers(0, n))
        size = min(int(rng.choice([_run_length(rng), int(rng.integers(1, 2048))])), n - start)
        at = int(rng.integers(0, n + 1))
        out[at:at] = data[start:start + size]
        return out, {"from": start, "size": size, "at": at}
    raise ValueError(kind)


def _leaves(value, path=()):
    """Every (path) into a JSON value, containers included."""
    yield path
    if isinstance(value, dict):
        for k in sorted(value):
            yield from _leaves(value[k], path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))


def _odd_value(original, rng):
    pick = int(rng.integers(0, len(ODD_VALUES) + 6))
    if pick < len(ODD_VALUES):
        return copy.deepcopy(ODD_VALUES[pick])
    if isinstance(original, bool) or not isinstance(original, (int, float)):
        return [original] if pick % 2 else str(original)
    return [original + 1, original - 1, original * 2, float(original), str(original), -original][pick - len(ODD_VALUES)]


def header_field(data: bytes, rng) -> tuple[bytes, dict]:
    base, parts = split(data)
    probe = assemble(base, parts)  # the header as the file has it, to pick a path from
    from tvq.codec.container import parse_header

    full = parse_header(probe)[0]
    paths = [p for p in _leaves(full) if p]
    path = paths[int(rng.integers(0, len(paths)))]
    target = full
    for key in path:
        target = target[key]
    value = _odd_value(target, rng) if rng.random() < 0.9 else "<deleted>"

    def edit(header):
        node = header
        for key in path[:-1]:
            node = node[key]
        if value == "<deleted>":
            if isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node.pop(path[-1])
        else:
            node[path[-1]] = copy.deepcopy(value)

    return assemble(base, parts, edit), {"path": list(path), "value": _short(value)}


def chunk_payload(data: bytes, rng) -> tuple[bytes, dict]:
    base, parts = split(data)
    coded = [k for k, (e, _, _) in enumerate(parts) if e["codec"] != "raw"]
    if coded and rng.random() < 0.75:  # mostly entropy-coded chunks: their decoders see the damage first
        i = coded[int(rng.integers(0, len(coded)))]
    else:
        i = int(rng.integers(0, len(parts)))
    e, tag, stored = parts[i]
    kind = str(rng.choice(["bitflip", "overwrite", "truncate", "insert", "delete", "duplicate"]))
    if stored and rng.random() < 0.5:  # the first bytes: a codec's own header (zstd frame header, ans model)
        head = min(len(stored), 16)
        changed, info = byte_mutation(kind, stored[:head], rng)
        changed += stored[head:]
        info["head"] = head
    elif stored:
        changed, info = byte_mutation(kind, stored, rng)
    else:
        changed, info = bytearray(rng.integers(0, 256, 4, dtype=np.uint8).tobytes()), {"filled": 4}
    parts = parts[:i] + [(e, tag, bytes(changed))] + parts[i + 1:]
    return assemble(base, parts), {"chunk": i, "chunk_kind": e["kind"], "codec": e["codec"], "mutation": kind, **info}


def chunk_shuffle(data: bytes, rng) -> tuple[bytes, dict]:
    base, parts = split(data)
    i, j = sorted(int(x) for x in rng.integers(0, len(parts), 2))
    how = str(rng.choice(["drop", "duplicate", "swap", "retag"]))
    if how == "drop":
        parts = parts[:i] + parts[i + 1:]
    elif how == "duplicate":
        parts = parts[:j] + [parts[i]] + parts[j:]
    elif how == "swap":
        parts[i], parts[j] = parts[j], parts[i]
    else:  # another chunk's tag and kind over this payload
        e, _, stored = parts[i]
        other, tag, _ = parts[j]
        parts[i] = (dict(e, kind=other["kind"]), tag, stored)
    return assemble(base, parts), {"how": how, "chunks": [i, j]}


def mutate(data: bytes, seed: int, case: int) -> tuple[bytes, dict]:
    rng = np.random.default_rng([seed, case])
    names, weights = zip(*MUTATIONS)
    kind = str(rng.choice(names, p=np.array(weights) / sum(weights)))
    if kind in BYTE_MUTATIONS:
        out, info = byte_mutation(kind, data, rng)
    elif kind.endswith("+crc"):
        out, info = byte_mutation(kind[:-4], data, rng)
        out = resign(out)
    elif kind == "header-field":
        out, info = header_field(data, rng)
    elif kind == "chunk-payload":
        out, info = chunk_payload(data, rng)
    else:
        out, info = chunk_shuffle(data, rng)
    return bytes(out), {"kind": kind, **info}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- running the cases -----------------------------------------------------------------------------------


def read_case(data: bytes, points) -> tuple[str, object, float]:
    """(outcome, detail, milliseconds codec.read took) of reading ``data``; detail: the FormatError, the
    Decoded, or the other exception."""
    import torch

    from tvq import codec

    t0 = time.perf_counter()
    try:
        try:
            decoded = codec.read(data)
        finally:
            ms = (time.perf_counter() - t0) * 1e3
    except codec.Truncated as err:
        return "truncated", err, ms
    except codec.FormatError as err:
        return "format_error", err, ms
    except (Exception, CaseTimeout) as err:  # noqa: BLE001 - what the fuzzer is here to find
        return "other", err, ms
    try:  # a decoded model must be whole: its LOD count and byte count make sense, and it evaluates
        header = decoded.header
        if not 1 <= decoded.lods <= header["model"]["num_lods"] or decoded.bytes_used > len(data):
            raise AssertionError(f"decoded {decoded.lods} LODs from {decoded.bytes_used} of {len(data)} bytes")
        with torch.no_grad():
            features = decoded.field.grid(points, decoded.lods - 1)
            density, colour = decoded.field.decoder(features, torch.nn.functional.normalize(points, dim=1))
        if features.shape != (points.shape[0], header["model"]["feature_dim"]) or colour.shape != (points.shape[0], 3):
            raise AssertionError("the decoded field gives outputs of the wrong shape")
    except (Exception, CaseTimeout) as err:  # noqa: BLE001
        return "other", err, ms
    return "decoded", decoded, ms


def _message_key(message: str) -> str:
    """A FormatError message without its file name and numbers, to count which checks fire."""
    message = message.split(": ", 1)[1] if ": " in message else message
    return re.sub(r"\d+", "N", message)[:120]


def _traceback_summary(err: BaseException) -> list[str]:
    frames = traceback.extract_tb(err.__traceback__)
    return [f"{Path(f.filename).name}:{f.lineno} in {f.name}: {f.line}" for f in frames[-8:]]


def tiny_model(folder: Path) -> Path:
    """A tiny trained VQ model (4 bits, 2 LODs, a few kB) as a .tvq, so that the fuzzer runs anywhere."""
    from tvq import codec
    from tvq.data import load_scene
    from tvq.data.synthetic import make_scene
    from tvq.train import TrainConfig, Trainer

    make_scene(folder / "scene", size=24, n_train=6, n_val=0, n_test=2, seed=1)
    scene = load_scene(folder / "scene")
    trainer = Trainer(scene, TrainConfig(bits=4, iters=5, max_level=4, num_lods=2, batch_rays=256, eval_every=0,
                                         vq_warmup=0), folder / "run")
    trainer.setup()
    trainer.fit()
    train = scene.split("train")
    cameras = codec.camera_header(train[0].K, scene.width, scene.height, np.stack([v.c2w for v in train]))
    path = folder / "tiny.tvq"
    codec.write(path, trainer.field, background=scene.background, cameras=cameras)
    return path


def fuzz(data: bytes, mutations: int, seed: int, case_timeout: float, progress: bool = True) -> dict:
    import torch

    from tvq import codec

    points = torch.rand(64, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    codec.read(data, strict=True)  # the unmutated file must be whole
    if read_case(data, points)[0] != "decoded":  # (and this compiles the kernels the checks run, untimed)
        raise SystemExit("the unmutated file does not decode and evaluate")
    outcomes = Counter()
    by_mutation: dict[str, Counter] = {}
    lods, messages, other_types = Counter(), Counter(), Counter()
    others, multiline, unchanged = [], [], 0
    times, slowest = [], []
    use_alarm = hasattr(signal, "setitimer") and case_timeout > 0

    def on_alarm(signum, frame):
        raise CaseTimeout(f"read ran past {case_timeout} s")

    previous = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    started = time.perf_counter()
    try:
        for case in range(mutations):
            mutated, info = mutate(data, seed, case)
            unchanged += mutated == data
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, case_timeout)
            try:
                outcome, detail, ms = read_case(mutated, points)
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            times.append(ms)
            slowest = sorted(slowest + [(ms, case, info)], key=lambda r: -r[0])[:KEEP_EXAMPLES]
            outcomes[outcome] += 1
            by_mutation.setdefault(info["kind"], Counter())[outcome] += 1
            if outcome == "decoded":
                lods[str(detail.lods)] += 1
            elif outcome in ("format_error", "truncated"):
                message = str(detail)
                messages[_message_key(message)] += 1
                if "\n" in message:
                    multiline.append({"case": case, "mutation": info, "message": message[:2000]})
            else:
                other_types[type(detail).__name__] += 1
                if len(others) < KEEP_OTHER:
                    others.append({"case": case, "mutation": info, "type": type(detail).__name__,
                                   "repr": repr(detail)[:500], "traceback": _traceback_summary(detail)})
            if progress and (case + 1) % 10000 == 0:
                print(f"{case + 1} / {mutations}: {dict(outcomes)}", file=sys.stderr, flush=True)
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, previous)
    total = time.perf_counter() - started
    ordered = sorted(times)
    return {
        "mutations": mutations,
        "unchanged": int(unchanged),
        "outcomes": {k: outcomes.get(k, 0) for k in OUTCOMES},
        "by_mutation": {k: {o: v.get(o, 0) for o in OUTCOMES} for k, v in sorted(by_mutation.items())},
        "decoded_lods": dict(sorted(lods.items())),
        "messages": dict(messages.most_common(40)),
        "multiline_messages": len(multiline),
        "multiline_examples": multiline[:KEEP_EXAMPLES],
        "other_types": dict(other_types),
        "other_exceptions": others,
        "timing": {
            "total_s": total,
            "cases_per_s": mutations / total if total > 0 else None,
            "read_ms": {"mean": statistics.fmean(times), "median": statistics.median(times),
                        "p99": ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)],
                        "max": ordered[-1]} if times else None,
            "slowest": [{"case": c, "ms": ms, "mutation": i} for ms, c, i in slowest],
        },
    }


def rerun(data: bytes, seed: int, case: int) -> int:
    """One case alone, with the full traceback of whatever it raises."""
    from tvq import codec

    mutated, info = mutate(data, seed, case)
    print(json.dumps(info), file=sys.stderr)
    try:
        decoded = codec.read(mutated)
    except codec.FormatError as err:
        print(f"{type(err).__name__}: {err}")
        return 0
    print(f"decoded: {decoded.lods} LODs, {decoded.bytes_used} bytes used, complete={decoded.complete}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=None, help="the .tvq to mutate (default: a tiny model trained here)")
    parser.add_argument("--mutations", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--case", type=int, default=None, help="rerun one case (its traceback is not caught)")
    parser.add_argument("--case-timeout", type=float, default=10.0, help="seconds one read may take (0: no limit)")
    parser.add_argument("--arch", default="cpu", help="Taichi backend for the decoded fields: cpu | cuda | auto")
    args = parser.parse_args(argv)
    if args.mutations < 1:
        parser.error("--mutations must be at least 1")
    from tvq import runtime

    runtime.init(None if args.arch == "auto" else args.arch)
    with tempfile.TemporaryDirectory(prefix="tvq-fuzz-") as tmp:
        path = Path(args.file) if args.file else tiny_model(Path(tmp))
        data = path.read_bytes()
    if args.case is not None:
        return rerun(data, args.seed, args.case)
    results = {
        "file": str(args.file) if args.file else "tiny VQ model trained by the fuzzer (bits 4, max_level 4, 2 LODs)",
        "file_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "seed": args.seed,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python -m benchmarks.fuzz_codec " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    results.update(fuzz(data, args.mutations, args.seed, args.case_timeout))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    failed = results["outcomes"]["other"] + results["multiline_messages"]
    results["ok"] = failed == 0
    if args.out:
        write_json(args.out, results)
    summary = {k: results[k] for k in ("file_bytes", "outcomes", "other_types", "multiline_messages", "ok")}
    print(json.dumps(summary | {"seconds": round(results["timing"]["total_s"], 1)}, indent=2))
    for other in results["other_exceptions"]:
        print(f"case {other['case']} ({other['mutation']['kind']}): {other['repr']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmarks run (small sizes, whatever backend the tests use) and write the JSON they promise."""

import json

import pytest

from benchmarks import kernels
from benchmarks.train import parse_run


@pytest.mark.slow
def test_kernel_benchmarks_run_small_and_write_json(tmp_path):
    out = tmp_path / "kernels.json"
    assert kernels.main(["--small", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["benchmarks"]) == set(kernels.MODULES)
    ops = results["benchmarks"]["bench_gather_codebook"]["ops"]
    for name in ("gather", "vq_gather", "hash_gather"):
        assert ops[name]["taichi"]["forward_backward"]["median_ms"] > 0
        for version in ops[name]:
            if isinstance(ops[name][version], dict) and "max_abs_diff_vs_taichi" in ops[name][version]:
                assert ops[name][version]["max_abs_diff_vs_taichi"] < 1e-4  # every torch version computes the op
    composite = results["benchmarks"]["bench_raymarch_composite"]["composite"]
    assert max(composite["max_abs_diff"].values()) < 1e-4
    assert composite["speedup_forward_backward"] > 0


def test_train_benchmark_run_specs():
    assert parse_run("data/lego:6:5") == ("data/lego", 6, 5.0, {})
    assert parse_run('data/lego:4:1.5:{"iters": 10, "feature_dim": 32}') == (
        "data/lego", 4, 1.5, {"iters": 10, "feature_dim": 32})

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


@pytest.mark.slow
def test_code_replicas_benchmark_runs_small_and_restores_the_default():
    from benchmarks import bench_code_replicas
    from tvq.kernels import codebook

    default = codebook.MAX_REPLICAS
    results = bench_code_replicas.run("cpu", True)
    assert codebook.MAX_REPLICAS == default
    rows = results["rows"]
    assert len(rows) == 2 * 2 * 2 * len(bench_code_replicas.REPLICAS)  # bits x codes x ops x P
    assert {r["replicas"] for r in rows} == set(bench_code_replicas.REPLICAS)
    assert all(r["forward_backward"]["median_ms"] > 0 for r in rows)


def test_train_benchmark_run_specs():
    assert parse_run("data/lego:6:5") == ("data/lego", 6, 5.0, {})
    assert parse_run('data/lego:4:1.5:{"iters": 10, "feature_dim": 32}') == (
        "data/lego", 4, 1.5, {"iters": 10, "feature_dim": 32})


def test_codec_fuzzer_runs_on_a_tiny_model_and_writes_json(tmp_path):
    """``--file`` omitted: the fuzzer trains its own tiny model, mutates it 200 times and reports."""
    from benchmarks import fuzz_codec

    out = tmp_path / "fuzz.json"
    code = fuzz_codec.main(["--mutations", "200", "--seed", "3", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["mutations"] == 200 and results["seed"] == 3 and results["file_bytes"] > 1000
    assert sum(results["outcomes"].values()) == 200
    assert sum(sum(row.values()) for row in results["by_mutation"].values()) == 200
    assert set(results["by_mutation"]) <= {name for name, _ in fuzz_codec.MUTATIONS}
    assert results["outcomes"]["format_error"] > 0 and results["outcomes"]["truncated"] > 0
    assert results["timing"]["read_ms"]["median"] > 0 and results["timing"]["total_s"] > 0
    assert results["other_exceptions"] == [] and results["multiline_messages"] == 0, results["other_exceptions"]
    assert code == 0 and results["ok"]


def test_codec_fuzzer_byte_mutations_are_reproducible_and_do_what_they_say():
    import numpy as np

    from benchmarks import fuzz_codec

    data = bytes(range(256)) * 4
    for kind in fuzz_codec.BYTE_MUTATIONS:
        out, info = fuzz_codec.byte_mutation(kind, data, np.random.default_rng(1))
        assert (out, info) == fuzz_codec.byte_mutation(kind, data, np.random.default_rng(1))
        if kind == "truncate":
            assert bytes(out) == data[:info["at"]]
        elif kind == "delete":
            assert bytes(out) == data[:info["at"]] + data[info["at"] + info["size"]:]
        elif kind == "insert":
            assert len(out) == len(data) + info["size"] and out[:info["at"]] == data[:info["at"]]
        elif kind == "duplicate":
            copied = data[info["from"]:info["from"] + info["size"]]
            assert bytes(out) == data[:info["at"]] + copied + data[info["at"]:]
        elif kind == "bitflip":
            flipped = np.unpackbits(np.frombuffer(bytes(out), np.uint8) ^ np.frombuffer(data, np.uint8),
                                    bitorder="little")
            assert sorted(np.flatnonzero(flipped).tolist()) == sorted(b for b in set(info["bits"])
                                                                      if info["bits"].count(b) % 2)


def test_codec_benchmark_reports_sizes_times_and_psnr(tmp_path):
    from benchmarks import codec as codec_bench
    from tvq import runtime
    from tvq.data import load_scene
    from tvq.data.synthetic import make_scene
    from tvq.train import TrainConfig, Trainer

    make_scene(tmp_path / "scene", size=24, n_train=6, n_val=0, n_test=2, seed=1)
    runtime.init("cpu")
    for bits in (0, 4):
        trainer = Trainer(load_scene(tmp_path / "scene"), TrainConfig(bits=bits, iters=5, max_level=4, num_lods=2,
                                                                      batch_rays=256, eval_every=0, vq_warmup=0
                                                                      if bits else None), tmp_path / f"b{bits}")
        trainer.setup()
        trainer.fit()
    out = tmp_path / "codec.json"
    assert codec_bench.main(["--checkpoints", str(tmp_path / "b0" / "checkpoint.pt"),
                             str(tmp_path / "b4" / "checkpoint.pt"), "--scene", str(tmp_path / "scene"),
                             "--out", str(out), "--repeats", "1", "--arch", "cpu"]) == 0
    rows = json.loads(out.read_text())["models"]
    raw, vq = rows
    assert vq["file_bytes"] < raw["file_bytes"] and vq["ratio_to_trained_bits0_file"] > 1
    assert vq["bits0_raw_layout_bytes"] > vq["raw_file_bytes"]
    for row in rows:
        assert row["file_bytes"] <= row["raw_file_bytes"]
        assert sum(row["components"].values()) == row["file_bytes"]
        assert abs(row["psnr_file"][-1] - row["psnr_checkpoint"][-1]) < 0.05
        assert row["decode_seconds"] > 0 and row["first_lod_bytes"] == row["lods"][0]["end"]
        assert all(v["chosen"] <= v["raw"] for v in row["codecs"].values())


def test_step_profile_names_every_stage_and_writes_json(tmp_path):
    from benchmarks import profile_step
    from tvq.data.synthetic import make_scene
    from tvq.profiling import STAGES

    make_scene(tmp_path / "scene", size=24, n_train=6, n_val=0, n_test=2, seed=1)
    out = tmp_path / "profile.json"
    config = json.dumps({"max_level": 4, "num_lods": 2, "batch_rays": 256, "vq_warmup": 0})
    assert profile_step.main(["--scene", str(tmp_path / "scene"), "--bits", "0", "4", "--warmup-steps", "3",
                              "--steps", "2", "--config", config, "--arch", "cpu", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["bits"] for r in runs] == [0, 4] and [r["kind"] for r in runs] == ["raw", "vq"]
    for run in runs:
        assert run["wall_ms"] > 0 and run["gpu_busy_ms"] is None  # no GPU here
        assert list(run["stages"]) == list(STAGES)
        # the march runs in two parts: the next step's sample count, this step's fill
        assert all(s["cpu_ms"] > 0 and s["calls_per_step"] == (2 if name == "march" else 1)
                   for name, s in run["stages"].items())


def test_prune_study_prunes_less_with_dilation_and_writes_json(tmp_path):
    from benchmarks import prune_study
    from tvq import runtime
    from tvq.data import load_scene
    from tvq.data.synthetic import make_scene
    from tvq.export import export_checkpoint
    from tvq.train import TrainConfig, Trainer

    make_scene(tmp_path / "scene", size=24, n_train=6, n_val=0, n_test=2, seed=1)
    runtime.init("cpu")
    trainer = Trainer(load_scene(tmp_path / "scene"), TrainConfig(bits=4, iters=30, max_level=5, num_lods=2,
                                                                  batch_rays=512, eval_every=0, vq_warmup=0),
                      tmp_path / "b4")
    trainer.setup()
    trainer.fit()
    export_checkpoint(tmp_path / "b4" / "checkpoint.pt", tmp_path / "b4.tvq")
    out = tmp_path / "prune.json"
    assert prune_study.main(["--model", str(tmp_path / "b4.tvq"), "--scene", str(tmp_path / "scene"), "--downscale",
                             "1", "--every", "1", "--thresholds", "1e-3", "0.05", "--arch", "cpu",
                             "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    base, rows = result["as_trained"], result["pruned"]
    assert [(r["threshold"], r["dilated"]) for r in rows] == [(1e-3, False), (1e-3, True), (0.05, False), (0.05, True)]
    for plain, grown in zip(rows[::2], rows[1::2]):
        assert plain["cells"] <= grown["cells"] <= base["cells"]
        assert plain["file_bytes"] <= grown["file_bytes"] <= base["file_bytes"]
    assert rows[2]["cells"] < base["cells"]  # a high threshold really prunes


def test_vqrf_ablation_writes_a_row_per_configuration_and_survives_a_refused_one(tmp_path):
    from benchmarks import vqrf_ablation
    from tvq import runtime
    from tvq.data import load_scene
    from tvq.data.synthetic import make_scene
    from tvq.train import TrainConfig, Trainer

    make_scene(tmp_path / "scene", size=24, n_train=6, n_val=0, n_test=2, seed=1)
    runtime.init("cpu")
    trainer = Trainer(load_scene(tmp_path / "scene"), TrainConfig(bits=0, iters=60, max_level=4, num_lods=2,
                                                                  batch_rays=512, eval_every=0, density="exp"),
                      tmp_path / "raw")
    trainer.setup()
    trainer.fit()
    trainer.save_checkpoint()
    out = tmp_path / "ablation.json"
    base = json.dumps({"finetune_steps": 5, "kmeans_steps": 10, "codebook": 16})
    assert vqrf_ablation.main(["--checkpoint", str(tmp_path / "raw" / "checkpoint.pt"), "--base", base,
                               "--configs", '{"prune": 0.05}', '{"keep": [1, 0.9, 0.6]}', "--eval-views", "1",
                               "--out-dir", str(tmp_path / "files"), "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 2 and "error" in runs[1] and "one per LOD" in runs[1]["error"]
    ok = runs[0]
    assert ok["file_bytes"] == (tmp_path / "files" / "vqrf-prune0.05.tvq").stat().st_size
    assert ok["options"]["prune"] == 0.05 and ok["psnr_after"] > 0 and ok["eval_views"] == 1
    assert [r["level"] for r in ok["levels"]] == [3, 4]


def test_rd_plot_draws_the_named_curves_from_the_first_table_that_has_them(tmp_path):
    from benchmarks import rd_plot

    def row(name, lod, size, psnr):
        return {"file": f"/x/{name}.tvq", "name": name, "lod": lod, "level": 5 + lod, "bytes": size, "psnr": psnr}

    new = {"scene": "/s/lego", "split": "test", "views": 25, "refs": [{"name": "VQRF", "bytes": 1.5e6, "psnr": 35.4}],
           "rows": [row("vqad6", 0, 1e4, 23.0), row("vqad6", 1, 1e5, 30.0), row("other", 0, 1e4, 20.0)]}
    old = {"scene": "/s/lego", "split": "test", "views": 25, "rows": [row("vqad6", 0, 2e4, 1.0), row("hash12", 0, 3e4, 24.0)]}
    rows = rd_plot.select([new, old], ["vqad6=VQ-AD 6-bit", "hash12"])
    assert [(r["name"], r["bytes"]) for r in rows] == [("VQ-AD 6-bit", 1e4), ("VQ-AD 6-bit", 1e5), ("hash12", 3e4)]
    with pytest.raises(SystemExit, match="nope"):
        rd_plot.select([new, old], ["nope"])
    paths = []
    for i, table in enumerate((new, old)):
        paths.append(tmp_path / f"rd{i}.json")
        paths[-1].write_text(json.dumps(table))
    out = tmp_path / "rd.png"
    assert rd_plot.main([*map(str, paths), "--curves", "vqad6", "hash12", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vqrf_table_describes_options_against_the_papers_and_lists_refused_runs():
    from benchmarks.vqrf_table import table

    def run(method, size, **options):
        return {"method": method, "file_bytes": size, "options": {"prune": 0.001, "keep": 0.6, "codebook": 4096,
                                                                  "finetune_steps": 2000, **options},
                "levels": [{"pruned": 1, "quantised": 2, "kept": 3}], "lods": [{"end": 12_000}],
                "components": {"indices": 5e5, "features": 1e5, "structure": 2e5, "codebooks": 8e3},
                "psnr_before": 34.0, "psnr_after": 32.5, "compress_seconds": 54.2}

    text = table([run("vqrf", 2_000_000), run("vqrf", 1_000_000, keep=[1, 0.99]),
                  {"file": "x.tvq", "method": "vqrf", "error": "lower --prune"}])
    lines = text.splitlines()
    assert "| vqrf | the paper's | 1 / 2 / 3 | 2.00 MB | 12.0 kB | 500 / 100 / 200 / 8 kB | 34.00 -> 32.50 dB | 54 s |" \
        == lines[2]
    assert lines[3].startswith("| vqrf | keep 1,0.99 |")
    assert lines[-1] == "refused: x.tvq: lower --prune"


def test_recipe_table_reads_grouped_and_plain_studies_against_the_papers_recipe():
    from benchmarks.recipe_table import PAPER_RECIPE, table

    def run(seconds, **config):
        return {"bits": 0, "train_seconds": seconds, "iterations": 9000, "seconds_to_30db": 9.0,
                "peak_gpu_memory_bytes": 2 ** 31, "lods": [{"psnr": 30.0}, {"psnr": 33.5}],
                "config": {**PAPER_RECIPE, "iters": 10 ** 6, "minutes": 1.0, **config}}

    text = table([("first", {"groups": {"levers": [run(5.0), {**run(40.0), "warmup": True}, run(60.0),
                                                   run(60.0, density="exp")]}}),
                  ("defaults", {"runs": [run(60.0, density="exp", lr_decay=None),
                                         {**run(60.0, density="exp", lr_decay=None, bits=6), "bits": 6}]})])
    lines = text.splitlines()[2:]
    assert len(lines) == 4  # the 5-second run and the one marked as a warm-up are left out
    assert lines[0].startswith("| levers | 0 | the paper's recipe | 60 s | 9,000 | 30.00 / 33.50 | 9.0 s | 2.0 GB |")
    assert lines[1].startswith('| levers | 0 | density "exp" |')
    assert lines[2].startswith("| defaults | 0 | density \"exp\", lr_decay 0.1 |")
    assert lines[3].startswith('| defaults | 6 | density "exp" |')  # with indices the default is no decay

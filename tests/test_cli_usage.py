"""The command line as a user types it (the installed `tvq` console script): usage errors, help, version,
Ctrl-C, and checkpoints that are unsafe or damaged."""

import os
import signal
import subprocess
import time

import pytest
import torch
import typer

from tvq.apps.cli import app


def subcommands() -> list[str]:
    return sorted(typer.main.get_command(app).commands)


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
    (["train"], "Missing argument"),
    (["train", "S", "--out", "o", "--iters", "abc"], "--iters"),
    (["train", "S", "--out", "o", "--arch", "gpu"], "--arch"),
    (["train", "S", "--out", "o", "--octree", "lidar"], "--octree"),
    (["render", "c.pt", "--out", "o", "--orbit", "0"], "--orbit"),
    (["scene", "a", "b"], "unexpected extra argument"),
    (["train", "S", "--no-such-option"], "No such option"),
])
def test_usage_errors_show_usage_and_exit_2(tvq, tmp_path, args, message):
    proc = tvq(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.startswith("Usage: tvq"), proc.stderr
    assert message.lower() in proc.stderr.lower(), proc.stderr
    assert not list(tmp_path.iterdir()), "a usage error must not write anything"


def test_root_help_lists_every_command(tvq):
    proc = tvq("--help")
    assert proc.returncode == 0, proc.stderr
    for name in subcommands():
        assert name in proc.stdout


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help(tvq, command):
    proc = tvq(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: tvq " + command in " ".join(proc.stdout.split()), proc.stdout
    assert "Traceback" not in proc.stderr


def test_version_names_tvq_and_its_main_dependencies(tvq):
    from importlib.metadata import version

    proc = tvq("--version")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"tvq {version('tvq')} ")
    for package in ("taichi", "torch", "typer"):
        assert f"{package} {version(package)}" in line


def test_debug_flag_still_gives_usage_errors_not_tracebacks(tvq):
    proc = tvq("--debug", "nosuchcmd")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tvq, tmp_path):
    made = tvq("make-scene", tmp_path / "scene", "--size", 16, "--train", 4, "--val", 0, "--test", 1)
    assert made.returncode == 0, made.stderr
    log = tmp_path / "train.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([tvq.script, "train", str(tmp_path / "scene"), "--out", str(tmp_path / "run"),
                                 "--iters", "1000000", "--max-level", "4", "--num-lods", "2", "--batch-rays", "256",
                                 "--eval-every", "0", "--arch", "cpu"], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while "step " not in log.read_text():  # the progress log: training has begun
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 130, text
    assert "Traceback" not in text and "interrupted" in text
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


# ---- checkpoints from strangers ------------------------------------------------------------------------


class RunsCode:
    """A pickled object that would create a folder when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tvq, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "checkpoint.pt"
    torch.save({"format": "tvq-checkpoint", "version": 1, "config": RunsCode(marker)}, evil)
    # the payload is live: a plain unpickling would run it
    torch.load(evil, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    proc = tvq("render", evil, "--out", tmp_path / "frames", "--arch", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) and "refused" in proc.stderr, proc.stderr
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert not (tmp_path / "frames").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint of a 2-step run (raw features) and the dict it holds."""
    from tvq import runtime
    from tvq.data import load_scene
    from tvq.data.synthetic import make_scene
    from tvq.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("ckpt")
    make_scene(root / "scene", size=16, n_train=4, n_val=0, n_test=1, seed=1)
    runtime.init("cpu")
    trainer = Trainer(load_scene(root / "scene"), TrainConfig(iters=2, max_level=4, num_lods=2, batch_rays=128,
                                                              eval_every=0), root / "run")
    trainer.setup()
    trainer.fit()
    path = root / "run" / "checkpoint.pt"
    return path, torch.load(path, weights_only=True)


def _edit(ckpt: dict, dotted: str, value):
    import copy

    ckpt = copy.deepcopy(ckpt)
    *parents, last = dotted.split(".", 1) if dotted.startswith("field.") else dotted.split(".")
    target = ckpt
    for name in parents:
        target = target[name]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return ckpt


def test_a_real_checkpoint_renders(tvq, checkpoint, tmp_path):
    path, _ = checkpoint
    proc = tvq("render", path, "--orbit", 1, "--size", 8, "--out", tmp_path / "frames", "--arch", "cpu")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("field, value", [
    ("cameras", KeyError),
    ("cameras.K", KeyError),
    ("cameras.K", [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
    ("cameras.width", "16"),
    ("step", -1),
    ("octree.leaf_codes", torch.zeros(3)),
    ("octree.scale", float("nan")),
    ("octree.max_level", 6),
    ("scene.background", [1, 1]),
    ("config.bits", "4"),
    ("config.max_level", KeyError),
    ("config.subdivide_at", "3"),
    ("config.unknown_option", 1),
    ("grid_kind", "dense"),
    ("field.grid.features", KeyError),
    ("field.grid.features", torch.zeros(3, 16)),
])
def test_a_checkpoint_with_a_bad_field_is_refused_naming_it(tvq, checkpoint, tmp_path, field, value):
    _, ckpt = checkpoint
    bad = tmp_path / "checkpoint.pt"
    torch.save(_edit(ckpt, field, value), bad)
    proc = tvq("render", bad, "--orbit", 1, "--size", 8, "--out", tmp_path / "frames", "--arch", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr), proc.stderr
    assert f"'{field}'" in proc.stderr, proc.stderr


def test_leaf_codes_outside_the_octree_are_refused(tvq, checkpoint, tmp_path):
    _, ckpt = checkpoint
    bad = tmp_path / "checkpoint.pt"
    torch.save(_edit(ckpt, "octree.leaf_codes", torch.tensor([0, 8 ** 4], dtype=torch.int64)), bad)
    proc = tvq("render", bad, "--out", tmp_path / "frames", "--arch", "cpu")
    assert proc.returncode == 2 and one_line(proc.stderr) and "'octree.leaf_codes'" in proc.stderr, proc.stderr

"""Bad scene folders: ``tvq scene`` exits with code 2 and one ``error:`` line naming the file, no traceback."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from test_data_readers import make_blender, make_nerfstudio, make_rtmv, write_png
from tvq.data import load_scene
from tvq.errors import TvqError


def edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def set_matrix(value) -> Callable[[dict], None]:
    def fn(meta: dict) -> None:
        meta["frames"][1]["transform_matrix"] = value

    return fn


SINGULAR = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
NAN_MATRIX = [[math.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # json writes NaN


# Each case: (id, builder(tmp) -> (path to pass, file name the message must contain), words in the message)
def _missing_path(tmp: Path):
    return tmp / "nowhere", "nowhere"


def _no_format(tmp: Path):
    (tmp / "s").mkdir()
    (tmp / "s" / "notes.txt").write_text("hello")
    return tmp / "s", "s"


def _blender_malformed(tmp: Path):
    make_blender(tmp / "s", depth=False)
    (tmp / "s" / "transforms_val.json").write_text('{"camera_angle_x": 0.8, "frames": [')
    return tmp / "s", "transforms_val.json"


def _blender_no_angle(tmp: Path):
    make_blender(tmp / "s", depth=False)
    edit_json(tmp / "s" / "transforms_train.json", lambda m: m.pop("camera_angle_x"))
    return tmp / "s", "transforms_train.json"


def _blender_missing_image(tmp: Path):
    make_blender(tmp / "s", depth=False)
    (tmp / "s" / "train" / "r_2.png").unlink()
    return tmp / "s", "r_2.png"


def _blender_corrupt_image(tmp: Path):
    make_blender(tmp / "s", depth=False)
    (tmp / "s" / "test" / "r_1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp / "s", "r_1.png"


def _blender_sizes_differ(tmp: Path):
    make_blender(tmp / "s", depth=False)
    write_png(tmp / "s" / "val" / "r_0.png", np.zeros((6, 9, 4), np.uint8))
    return tmp / "s", "r_0.png"


def _blender_nan_matrix(tmp: Path):
    make_blender(tmp / "s", depth=False)
    edit_json(tmp / "s" / "transforms_train.json", set_matrix(NAN_MATRIX))
    return tmp / "s", "transforms_train.json"


def _blender_singular_matrix(tmp: Path):
    make_blender(tmp / "s", depth=False)
    edit_json(tmp / "s" / "transforms_test.json", set_matrix(SINGULAR))
    return tmp / "s", "transforms_test.json"


def _blender_bad_depth(tmp: Path):
    make_blender(tmp / "s")
    (tmp / "s" / "train" / "r_1_depth.png").write_bytes(b"garbage")
    return tmp / "s", "r_1_depth.png"


def _blender_missing_depth(tmp: Path):
    make_blender(tmp / "s")
    (tmp / "s" / "val" / "r_0_depth.png").unlink()
    return tmp / "s", "r_0_depth.png"


def _blender_rgb_depth(tmp: Path):
    make_blender(tmp / "s")
    write_png(tmp / "s" / "test" / "r_0_depth.png", np.zeros((6, 8, 3), np.uint8))
    return tmp / "s", "r_0_depth.png"


def _blender_empty_split(tmp: Path):
    make_blender(tmp / "s", depth=False)
    edit_json(tmp / "s" / "transforms_val.json", lambda m: m.update(frames=[]))
    return tmp / "s", "transforms_val.json"


def _ns_malformed(tmp: Path):
    make_nerfstudio(tmp / "s")
    (tmp / "s" / "transforms.json").write_text("[1, 2")
    return tmp / "s", "transforms.json"


def _ns_no_frames_left(tmp: Path):
    make_nerfstudio(tmp / "s", n=3)
    for p in (tmp / "s" / "images").iterdir():
        p.unlink()
    return tmp / "s", "transforms.json"


def _ns_sizes_differ(tmp: Path):
    make_nerfstudio(tmp / "s")
    edit_json(tmp / "s" / "transforms.json", lambda m: [m.pop("w"), m.pop("h")])
    write_png(tmp / "s" / "images" / "00006.png", np.zeros((8, 12, 3), np.uint8))
    return tmp / "s", "00006.png"


def _ns_declared_size(tmp: Path):
    make_nerfstudio(tmp / "s")
    write_png(tmp / "s" / "images" / "00004.png", np.zeros((9, 10, 3), np.uint8))
    return tmp / "s", "00004.png"


def _ns_singular(tmp: Path):
    make_nerfstudio(tmp / "s")
    edit_json(tmp / "s" / "transforms.json", set_matrix(SINGULAR))
    return tmp / "s", "transforms.json"


def _ns_inf_matrix(tmp: Path):
    make_nerfstudio(tmp / "s")
    edit_json(tmp / "s" / "transforms.json", set_matrix([[math.inf] * 4] * 3 + [[0, 0, 0, 1]]))
    return tmp / "s", "transforms.json"


def _ns_bad_depth(tmp: Path):
    make_nerfstudio(tmp / "s")
    (tmp / "s" / "depth" / "00005.png").write_bytes(b"\x00\x01")
    return tmp / "s", "00005.png"


def _ns_depth_size(tmp: Path):
    make_nerfstudio(tmp / "s")
    write_png(tmp / "s" / "depth" / "00002.png", np.zeros((4, 4), np.uint16))
    return tmp / "s", "00002.png"


def _ns_empty_listed_split(tmp: Path):
    make_nerfstudio(tmp / "s")
    lists = {"train_filenames": ["images/00001.png"], "val_filenames": [], "test_filenames": ["images/00000.png"]}
    edit_json(tmp / "s" / "transforms.json", lambda m: m.update(lists))
    return tmp / "s", "transforms.json"


def _ns_unknown_split_file(tmp: Path):
    make_nerfstudio(tmp / "s")
    edit_json(tmp / "s" / "transforms.json", lambda m: m.update(train_filenames=["images/99999.png"]))
    return tmp / "s", "transforms.json"


def _ns_no_focal(tmp: Path):
    make_nerfstudio(tmp / "s")
    edit_json(tmp / "s" / "transforms.json", lambda m: [m.pop("fl_x"), m.pop("fl_y")])
    return tmp / "s", "transforms.json"


def _rtmv_malformed_json(tmp: Path):
    make_rtmv(tmp / "s", n=3)
    (tmp / "s" / "00001.json").write_text("{")
    return tmp / "s", "00001.json"


def _rtmv_missing_json(tmp: Path):
    make_rtmv(tmp / "s", n=3)
    (tmp / "s" / "00002.json").unlink()
    return tmp / "s", "00002.json"


def _rtmv_corrupt_exr(tmp: Path):
    make_rtmv(tmp / "s", n=3)
    (tmp / "s" / "00001.exr").write_bytes(b"v/1\x01 broken")
    return tmp / "s", "00001.exr"


def _rtmv_corrupt_depth(tmp: Path):
    make_rtmv(tmp / "s", n=3)
    data = (tmp / "s" / "00000.depth.exr").read_bytes()
    (tmp / "s" / "00000.depth.exr").write_bytes(data[: len(data) // 2])
    return tmp / "s", "00000.depth.exr"


def _rtmv_nan_camera(tmp: Path):
    make_rtmv(tmp / "s", n=3)
    edit_json(tmp / "s" / "00001.json", lambda m: m["camera_data"].update(cam2world=NAN_MATRIX))
    return tmp / "s", "00001.json"


def _rtmv_singular_camera(tmp: Path):
    make_rtmv(tmp / "s", n=3)
    edit_json(tmp / "s" / "00000.json", lambda m: m["camera_data"].update(cam2world=SINGULAR))
    return tmp / "s", "00000.json"


def _rtmv_size_mismatch(tmp: Path):
    make_rtmv(tmp / "s", n=3)
    edit_json(tmp / "s" / "00002.json", lambda m: m["camera_data"].update(width=13))
    return tmp / "s", "00002.exr"


CASES = [
    _missing_path, _no_format,
    _blender_malformed, _blender_no_angle, _blender_missing_image, _blender_corrupt_image, _blender_sizes_differ,
    _blender_nan_matrix, _blender_singular_matrix, _blender_bad_depth, _blender_missing_depth, _blender_rgb_depth,
    _blender_empty_split,
    _ns_malformed, _ns_no_frames_left, _ns_sizes_differ, _ns_declared_size, _ns_singular, _ns_inf_matrix,
    _ns_bad_depth, _ns_depth_size, _ns_empty_listed_split, _ns_unknown_split_file, _ns_no_focal,
    _rtmv_malformed_json, _rtmv_missing_json, _rtmv_corrupt_exr, _rtmv_corrupt_depth, _rtmv_nan_camera,
    _rtmv_singular_camera, _rtmv_size_mismatch,
]


@pytest.mark.parametrize("build", CASES, ids=[c.__name__.lstrip("_") for c in CASES])
def test_cli_reports_one_line(tmp_path, build):
    path, name = build(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "tvq.apps.cli", "scene", str(path)], capture_output=True, text=True, timeout=120
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), res.stderr
    assert name in lines[0], res.stderr


def test_library_raises_tvq_error(tmp_path):
    path, _ = _blender_singular_matrix(tmp_path)
    with pytest.raises(TvqError, match="singular"):
        load_scene(path)
    with pytest.raises(TvqError, match="downscale"):
        load_scene(path, downscale=0)


def test_downscale_larger_than_image(tmp_path):
    make_blender(tmp_path / "s", depth=False)
    with pytest.raises(TvqError, match="smaller than the downscale factor"):
        load_scene(tmp_path / "s", downscale=16)

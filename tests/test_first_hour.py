"""The first hour of a new user (issue 23 §1): no dead end, and every wrong signal explained by the tool itself.

Offline (every network access refused, loopback only): the photo URL and the checkpoints say what to do instead; a
corrupt checkpoint placed for a name without a hash says how to replace it, and the good file placed afterwards is
used (it used to be refused for good: the first file's hash was learned). Pictures without a skeleton say why; a
2D model says it ignores --focal; FFmpeg's own noise about a damaged video becomes a few lines and a count; a reader
that leaves (`| head`) is a normal end; `calibrate` keeps its cache under $RTMW_EDGE_HOME and says where and how much.

Models: the real RTMDet-nano of shared/models and a random-weight DWPose-t (the smallest whole-body model).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import SHARED
from onnx import helper

from rtmw_edge.cli import main
from rtmw_edge.zoo import get_spec

IMAGES = SHARED / "images"
PHOTO = IMAGES / "000000000785.jpg"
DET = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not DET.is_file(), reason="shared models not available")


@pytest.fixture(scope="module")
def pose(tmp_path_factory):
    from rtmw_edge.export import export_onnx

    return export_onnx("dwpose-t-256x192", tmp_path_factory.mktemp("first-hour") / "dwpose-t.onnx", random_init=True,
                       progress=False)


@pytest.fixture
def offline(monkeypatch):
    """No network: every urlopen fails as a machine without DNS does."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", refuse)


def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


# ----------------------------------------------------------------------------------------------- offline
def test_offline_the_photo_url_and_the_checkpoints_say_what_to_do(offline, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path / "home"))
    url = "https://raw.githubusercontent.com/open-mmlab/mmpose/main/tests/data/coco/000000000785.jpg"
    assert main(["run", url, "--save", str(tmp_path / "out.jpg")]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: could not reach"), lines  # no blank line either
    assert "without a network, give a photo, folder or video on disk" in lines[0]

    assert main(["run", str(PHOTO), "--out", str(tmp_path / "o.jsonl")]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: 2 checkpoints are missing"), lines  # the bars left no line
    for name in ("rtmdet-nano-person", "rtmw-m-256x192"):
        assert get_spec(name).checkpoint_filename in lines[0]
    assert "--det/--pose ONNX files" in lines[0] and "export rtmw-m-256x192 --random-init" in lines[0]
    assert not (tmp_path / "o.jsonl").exists()


def _readme_offline_block() -> list[list[str]]:
    text = (ROOT / "README.md").read_text().split("**Without a network**", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", text, re.S).group(1)
    return [line.split("#", 1)[0].split() for line in block.splitlines() if line.strip()]


def test_the_offline_way_of_the_readme_reaches_a_skeleton(pose, tmp_path, monkeypatch, capsys):
    """The README's offline block, run as written from the checkout (../shared is beside it): a random-weight export
    (here the smaller DWPose-t this module exported, same code path) then `run` with ONNX files → a picture with a
    skeleton and JSON lines."""
    export, run = _readme_offline_block()
    assert export[:3] == ["rtmw-edge", "export", "rtmw-m-256x192"] and "--random-init" in export
    assert run[:2] == ["rtmw-edge", "run"]
    made = export[export.index("-o") + 1]
    assert run[run.index("--pose") + 1] == made  # the run uses what the export made
    monkeypatch.chdir(tmp_path)
    (tmp_path / made).write_bytes(pose.read_bytes())
    argv = [str(ROOT / a) if a.startswith("../shared") else a for a in run[1:]]
    assert main(argv) == 0
    out, picture = tmp_path / argv[argv.index("--out") + 1], tmp_path / argv[argv.index("--save") + 1]
    frame = json.loads(out.read_text())
    assert frame["source"] == PHOTO.name and frame["persons"]
    drawn, original = cv2.imread(str(picture)), cv2.imread(str(PHOTO))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).max() > 0
    assert not any("kpt-threshold" in line for line in _err_lines(capsys))  # random weights score high: drawn


def test_a_corrupt_checkpoint_placed_first_does_not_lock_out_the_good_one(pose, tmp_path, monkeypatch, capsys):
    """rtmw-m-256x192's official file name carries no hash: the file is checked by loading it, and a second file
    placed after a bad one is used (no hash learned from the first)."""
    from rtmw_edge import export

    home = tmp_path / "home"
    monkeypatch.setenv("RTMW_EDGE_HOME", str(home))
    spec = get_spec("rtmw-m-256x192")
    assert spec.hash_prefix is None
    placed = home / "checkpoints" / spec.checkpoint_filename
    placed.parent.mkdir(parents=True)
    placed.write_bytes(os.urandom(4096))  # a partial / corrupt download
    args = ["run", str(PHOTO), "--det", str(DET), "--pose", "rtmw-m-256x192", "--out", str(tmp_path / "o.jsonl")]
    assert main(args) == 1
    lines = [line for line in _err_lines(capsys) if line.strip()]
    assert lines[0].startswith("exporting rtmw-m-256x192 from its checkpoint") and "(once" in lines[0]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "is not a PyTorch checkpoint" in errors[0]
    assert f"delete it and place the official file from {spec.checkpoint_url} there" in errors[0]
    assert "`rtmw-edge models download rtmw-m-256x192`" in errors[0] and "give --pose an ONNX file" in errors[0]
    assert sorted(p.name for p in placed.parent.iterdir()) == [placed.name]  # no .sha256 learned from it

    used = []

    def export_onnx(name, output, checkpoint=None, **kwargs):  # stands in for the 13 s export of the real file
        used.append((name, Path(checkpoint).read_bytes()))
        Path(output).write_bytes(pose.read_bytes())
        return Path(output)

    monkeypatch.setattr(export, "export_onnx", export_onnx)
    good = os.urandom(8192)  # whatever the user placed second: no hash in the name, so it is taken as it is
    placed.write_bytes(good)
    assert main(args) == 0
    assert used == [("rtmw-m-256x192", good)]


# ------------------------------------------------------------------------------------------ wrong signals
@pytest.fixture(scope="module")
def faint_pose(pose, tmp_path_factory):
    """The same model with its SimCC outputs scaled by 1e-3: every keypoint score ends up under 0.3."""
    model = onnx.load(str(pose))
    graph = model.graph
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(1e-3, np.float32), "faint"))
    for out in graph.output:
        raw = out.name + "_loud"
        for node in graph.node:
            node.output[:] = [raw if n == out.name else n for n in node.output]
        graph.node.append(helper.make_node("Mul", [raw, "faint"], [out.name]))
    path = tmp_path_factory.mktemp("faint") / "faint.onnx"
    onnx.save(model, str(path))
    return path


def test_a_picture_without_skeleton_says_why_once(faint_pose, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("000000000785.jpg", "000000040083.jpg"):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    out = tmp_path / "o.jsonl"
    assert main(["run", str(folder), "--det", str(DET), "--pose", str(faint_pose), "--save", str(tmp_path / "pics"),
                 "--out", str(out)]) == 0
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    best = max(max(p["keypoint_scores"]) for f in frames for p in f["persons"])
    assert 0 < best <= 0.3  # the independent fact: nothing above the default threshold
    hints = [line for line in _err_lines(capsys) if "--kpt-threshold" in line]
    assert len(hints) == 1 and hints[0].startswith("warning: frame 0:") and "--kpt-threshold 0.3" in hints[0]
    assert main(["run", str(folder), "--det", str(DET), "--pose", str(faint_pose), "--save", str(tmp_path / "p2"),
                 "--kpt-threshold", "0"]) == 0
    assert not [line for line in _err_lines(capsys) if "--kpt-threshold" in line]  # drawn now: nothing to say


def test_focal_on_a_2d_model_is_named_as_ignored(pose, tmp_path, capsys):
    assert main(["run", str(PHOTO), "--det", str(DET), "--pose", str(pose), "--focal", "1000,1000"]) == 0
    warnings = [line for line in _err_lines(capsys) if line.startswith("warning:")]
    assert len(warnings) == 1 and "--focal: only for RTMW3D pose models" in warnings[0]


# ------------------------------------------------------------------------------------ native noise, pipes
def _damaged_mp4(path: Path) -> Path:
    """MPEG-4 part 2 (FFmpeg's mpeg4 decoder) with bytes overwritten inside the frames: it still decodes, with
    FFmpeg complaining on stderr about damaged macroblocks."""
    image = cv2.resize(cv2.imread(str(PHOTO)), (320, 212))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 212))
    for i in range(12):
        writer.write(np.roll(image, 6 * i, axis=1))
    writer.release()
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(3)
    for pos in rng.integers(len(data) // 8, len(data) - len(data) // 8, 150):
        data[pos:pos + 6] = rng.integers(0, 256, 6, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


READ_ALL = "import cv2, sys\ncap = cv2.VideoCapture(sys.argv[1])\nwhile cap.read()[0]:\n    pass\n"


def test_ffmpeg_noise_about_a_damaged_video_becomes_a_few_lines_and_a_count(pose, tmp_path):
    video = _damaged_mp4(tmp_path / "damaged.mp4")
    # the independent count: what FFmpeg itself prints while OpenCV reads the whole file
    raw = subprocess.run([sys.executable, "-c", READ_ALL, str(video)], capture_output=True, text=True, timeout=120)
    noise = [line for line in raw.stderr.splitlines() if line.strip()]
    assert len(noise) > 10, "the damage should make FFmpeg talk"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "rtmw_edge.cli", "run", str(video), "--det", str(DET), "--pose",
                           str(pose), "--threads", "1", "--out", str(tmp_path / "o.jsonl")], capture_output=True,
                          text=True, timeout=300, env=env)
    lines = proc.stderr.splitlines()
    shown = [line for line in lines if line.startswith("native: ") and "not shown" not in line]
    counts = [int(m.group(1)) for line in lines if (m := re.match(r"native: (\d+) more line\(s\)", line))]
    assert 0 < len(shown) <= 5 * max(1, len(counts)), lines  # at most 5 per 10 s window
    assert len(shown) + sum(counts) >= len(noise)  # every line of FFmpeg's is shown or counted
    assert all(line.startswith(("native: ", "warning: ", "error: ")) or "frame(s)" in line for line in lines), lines
    assert not [line for line in lines if "@ 0x" in line and not line.startswith("native: ")]


def test_a_reader_that_leaves_is_a_normal_end(pose, tmp_path):
    """`rtmw-edge run ... --out - | head -1`: the closed pipe ends the run quietly with exit 0."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:03d}.jpg").symlink_to(PHOTO)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rtmw_edge.cli", "run", str(folder), "--det", str(DET), "--pose",
                             str(pose), "--threads", "1", "--out", "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader leaves, as `head -1` does
    _, err = proc.communicate(timeout=300)
    assert json.loads(first)["frame"] == 0
    assert proc.returncode == 0, err.decode()
    assert b"error" not in err and b"Traceback" not in err and b"Exception ignored" not in err, err.decode()
    assert b"standard output's reader left, so the run ended there" in err  # the run finished as a run does


# ---------------------------------------------------------------------------------------------- calibrate
def test_calibrate_keeps_its_cache_under_the_home_and_says_where_and_how_much(tmp_path, monkeypatch, capsys):
    from rtmw_edge.engines import format_bytes

    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "det.int8.onnx"
    code = main(["calibrate", str(DET), "--images", str(IMAGES), "-o", str(out), "--num", "8", "--threads", "1"])
    assert code in (0, 3) and out.is_file()
    cache = tmp_path / "home" / "calibration" / DET.stem
    assert (cache / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.int8.onnx", "home"]  # nothing in the working folder
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("calibration cache:")]
    assert said == [f"calibration cache: {cache} ({format_bytes(size)}; the next calibrate of this model reuses it, "
                    "delete it to free the space, --cache puts it elsewhere)"]

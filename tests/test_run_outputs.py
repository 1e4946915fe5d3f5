"""`rtmw-edge run` at its edges (issue 13): outputs that score, stream, survive bad input and signals.

Models: the real RTMDet-nano (shared/models) and a random-weight DWPose-t (133 keypoints, the smallest
whole-body model), so that COCO-WholeBody scoring runs end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from conftest import SHARED

from rtmw_edge.cli import main
from rtmw_edge.results import validate_frame_dict

IMAGES = SHARED / "images"
DET = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
WB_ANN = IMAGES / "test_coco_wholebody.json"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pose(tmp_path_factory):
    from rtmw_edge.export import export_onnx

    return export_onnx("dwpose-t-256x192", tmp_path_factory.mktemp("run") / "dwpose-t.onnx", random_init=True,
                       progress=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 6-frame MJPEG video of a real photo."""
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 425))
    image = cv2.imread(str(IMAGES / "000000000785.jpg"))
    for _ in range(6):
        writer.write(image)
    writer.release()
    return path


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_coco_results_of_a_folder_score_end_to_end(pose, tmp_path, capsys):
    """`run FOLDER --coco --ann` then `eval --predictions`: ids from the annotation's file names; the photo the
    annotation lacks (human-pose.jpg) is processed but left out of the COCO file, with a warning."""
    coco, out = tmp_path / "r.json", tmp_path / "r.jsonl"
    assert main(["run", str(IMAGES), "--det", str(DET), "--pose", str(pose), "--coco", str(coco), "--ann",
                 str(WB_ANN), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "human-pose.jpg" in err and "left out of the COCO results" in err
    gt = json.loads(WB_ANN.read_text())
    ids = {im["file_name"]: im["id"] for im in gt["images"]}
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    for f in frames:
        validate_frame_dict(f, num_keypoints=133)
    assert sorted(f["source"] for f in frames) == sorted([*ids, "human-pose.jpg"])
    items = json.loads(coco.read_text())
    persons = {f["source"]: len(f["persons"]) for f in frames}
    assert sorted({i["image_id"] for i in items}) == sorted(ids.values())
    for name, image_id in ids.items():
        assert sum(i["image_id"] == image_id for i in items) == persons[name]
    # the same ids from COCO-style file names, without --ann (a folder of only COCO photos)
    coco_only = tmp_path / "coco_only"
    coco_only.mkdir()
    for name in ids:
        (coco_only / name).write_bytes((IMAGES / name).read_bytes())
    by_name = tmp_path / "by_name.json"
    assert main(["run", str(coco_only), "--det", str(DET), "--pose", str(pose), "--coco", str(by_name)]) == 0
    assert json.loads(by_name.read_text()) == items
    capsys.readouterr()
    # and they score: AP per part (random weights: low, but every part is there)
    metrics = tmp_path / "metrics.json"
    assert main(["eval", "--ann", str(WB_ANN), "--predictions", str(coco), "--out", str(metrics)]) == 0
    table = capsys.readouterr().out
    scored = json.loads(metrics.read_text())
    assert set(scored) == {"body", "foot", "face", "left_hand", "right_hand", "wholebody"}
    assert all(part in table for part in scored)


def test_coco_without_image_ids_is_refused_before_any_work(pose, clip, tmp_path, capsys):
    coco = tmp_path / "r.json"
    for source, message in ((IMAGES, "no image id for human-pose.jpg"), (clip, "a video has no image file names")):
        assert main(["run", str(source), "--det", str(DET), "--pose", str(pose), "--coco", str(coco)]) == 2
        errors = _errors(capsys.readouterr().err)
        assert len(errors) == 1 and message in errors[0], errors
    assert main(["run", str(IMAGES), "--det", str(DET), "--pose", str(pose), "--coco", str(coco), "--ann",
                 str(IMAGES / "test_coco.json"), "--save", str(IMAGES / "000000000785.jpg")]) == 2
    assert "is inside the input folder" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []


def test_save_never_writes_over_inputs(pose, tmp_path, capsys):
    """The issue's must-show: --save onto an input image or the input folder refuses, exit 2, nothing written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes((IMAGES / "000000000785.jpg").read_bytes())
    before = (photos / "a.jpg").read_bytes()
    for source, save in ((photos, photos / "a.jpg"), (photos, photos), (photos / "a.jpg", photos / "a.jpg"),
                         (photos / "a.jpg", photos), (photos, photos / "annotated")):
        assert main(["run", str(source), "--det", str(DET), "--pose", str(pose), "--save", str(save)]) == 2
        errors = _errors(capsys.readouterr().err)
        assert len(errors) == 1, errors
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg"] and (photos / "a.jpg").read_bytes() == before


def test_out_dash_streams_to_stdout_and_a_symlink_stays_a_link(pose, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "rtmw_edge.cli", "run", str(IMAGES / "000000196141.jpg"),
                           "--det", str(DET), "--pose", str(pose), "--out", "-"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    frames = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout is only JSON lines
    assert len(frames) == 1 and frames[0]["source"] == "000000196141.jpg" and len(frames[0]["persons"]) == 4
    assert "1 frame(s), 4 person(s)" in proc.stderr and not (tmp_path / "-").exists()
    real = tmp_path / "real.jsonl"
    real.write_text("")
    link = tmp_path / "poses.jsonl"
    link.symlink_to(real)
    assert main(["run", str(IMAGES / "000000000785.jpg"), "--det", str(DET), "--pose", str(pose), "--out",
                 str(link)]) == 0
    assert link.is_symlink() and len(real.read_text().splitlines()) == 1


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 180.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {proc.stderr.read()}")
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} lines in {path} after {timeout} s")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signals_finalise_a_looping_video_run(pose, clip, tmp_path, signum, code):
    """JSON lines are readable while the run goes on (tail -f); the signal ends it with 143 / 130, the video
    is finalised and playable, no temporary file is left."""
    out, video = tmp_path / "o.jsonl", tmp_path / "o.mp4"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rtmw_edge.cli", "run", str(clip), "--loop", "--det", str(DET),
                             "--pose", str(pose), "--out", str(out), "--save", str(video)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        live = _wait_for_lines(out, 3, proc)  # the stream under its final name, while the run goes on
        assert all(json.loads(line)["source"] == "clip.avi" for line in live)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=180)  # generous: a loaded 2-core machine
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(frames) >= 3 and [f["frame"] for f in frames] == list(range(len(frames)))
    cap = cv2.VideoCapture(str(video))
    ok, image = cap.read()
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert ok and image.shape[1:] == (640, 3) and abs(image.shape[0] - 425) <= 1  # MPEG-4 keeps even sizes
    assert count >= len(frames) - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "o.mp4"]


def test_a_signal_while_loading_or_writing_leaves_no_output(pose, tmp_path, monkeypatch, capsys):
    from rtmw_edge import outputs, pipeline
    from rtmw_edge.errors import Terminated

    args = ["run", str(IMAGES / "000000000785.jpg"), "--det", str(DET), "--pose", str(pose), "--out",
            str(tmp_path / "o.jsonl"), "--coco", str(tmp_path / "c.json"), "--save", str(tmp_path / "a.jpg")]

    def terminated(*a, **k):
        raise Terminated()

    with monkeypatch.context() as m:  # SIGTERM while the models load
        m.setattr(pipeline.PoseEstimator, "__init__", terminated)
        assert main(args) == 143
    assert sorted(tmp_path.iterdir()) == []
    real_replace = os.replace

    def replace(src, dst):  # SIGTERM while the final COCO file is renamed into place
        if str(dst).endswith("c.json"):
            raise Terminated()
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(outputs.os, "replace", replace)
        assert main(args) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "o.jsonl"]  # no c.json, no temporary
    capsys.readouterr()


def test_corrupt_video_frames_are_skipped_and_counted(pose, clip, tmp_path, capsys):
    data = bytearray(clip.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(starts) == 6
    data[starts[2] + 20: starts[3] - 20] = bytes(starts[3] - 40 - starts[2])  # frame 2: zeros, no image data
    broken = tmp_path / "broken.avi"
    broken.write_bytes(data)
    out = tmp_path / "o.jsonl"
    assert main(["run", str(broken), "--det", str(DET), "--pose", str(pose), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "skipped an unreadable frame" in warnings[0]
    assert len(_errors(err)) == 1 and "1 unreadable frame(s) skipped" in _errors(err)[0]
    assert len(out.read_text().splitlines()) == 5  # the frames after the corrupt one were processed


def test_offline_first_run_names_every_missing_checkpoint(tmp_path, monkeypatch, capsys):
    from rtmw_edge.errors import DownloadError
    from rtmw_edge.zoo import get_spec

    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path))

    def offline(url, dest, **kwargs):
        raise DownloadError(f"cannot download {url} (offline); without a network, download it elsewhere and place "
                            f"it at {dest}")

    monkeypatch.setattr("rtmw_edge.downloads.download", offline)
    assert main(["run", str(IMAGES / "000000000785.jpg"), "--det", "rtmdet-nano-person", "--pose",
                 "rtmw-m-256x192"]) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1
    for name in ("rtmdet-nano-person", "rtmw-m-256x192"):
        assert get_spec(name).checkpoint_filename in errors[0]


@pytest.mark.parametrize("option, value, message", [
    ("--smooth-min-cutoff", "-1", "--smooth-min-cutoff must be > 0"),
    ("--smooth-beta", "nan", "--smooth-beta must be >= 0"),
    ("--threads", "0", "--threads must be at least 1"),
    ("--max-persons", "0", "--max-persons must be at least 1"),
    ("--det-threshold", "1.5", "--det-threshold must be in [0, 1]"),
    ("--kpt-threshold", "-0.1", "--kpt-threshold must be in [0, 1]"),
    ("--backend", "cuda", "--backend must be one of"),
    ("--focal", "1000", "--focal must be two numbers"),
])
def test_option_values_are_checked_before_any_work(option, value, message, tmp_path, capsys):
    # a missing pose model: option checks come first, so the model is never looked for
    assert main(["run", str(IMAGES / "000000000785.jpg"), "--det", str(DET), "--pose", str(tmp_path / "no.onnx"),
                 "--out", str(tmp_path / "o.jsonl"), option, value]) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0], errors
    assert sorted(tmp_path.iterdir()) == []

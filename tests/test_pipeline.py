"""The CPU pipeline end to end: real detectors on real photos, a random-weight RTMW exported by the project."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import SHARED, coco_persons

from rtmw_edge import geometry as G
from rtmw_edge.backends import run_chunked
from rtmw_edge.cli import main
from rtmw_edge.errors import RtmwEdgeError
from rtmw_edge.export import export_onnx
from rtmw_edge.pipeline import PoseEstimator, resolve_model
from rtmw_edge.results import validate_frame_dict

IMAGES = SHARED / "images"
DETECTORS = {"rawhead": SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx",
             "e2e": SHARED / "models" / "rtmdet-nano_person_e2e_dyn.onnx"}


GT_COUNTS = {name: len(persons) for name, persons in coco_persons(IMAGES / "test_coco.json").items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    return {
        "pose": export_onnx("rtmw-m-256x192", tmp / "rtmw-m.onnx", random_init=True, progress=False),
        "pose_flip": export_onnx("rtmw-m-256x192", tmp / "rtmw-m-flip.onnx", random_init=True, flip_test=True,
                                 progress=False),
        "pose_fixed": export_onnx("rtmw-m-256x192", tmp / "rtmw-m-b2.onnx", random_init=True, batch=2,
                                  progress=False),
        "pose3d": export_onnx("rtmw3d-l-384x288", tmp / "rtmw3d.onnx", random_init=True, decode=True,
                              progress=False),
        "tmp": tmp,
    }


@pytest.fixture(scope="module")
def estimator(models):
    return PoseEstimator(DETECTORS["rawhead"], models["pose"])


@pytest.mark.parametrize("det", sorted(DETECTORS))
def test_right_number_of_people_and_keypoints_inside_their_crops(det, models):
    est = PoseEstimator(DETECTORS[det], models["pose"])
    for name, expected in GT_COUNTS.items():
        image = cv2.imread(str(IMAGES / name))
        result = est(image, frame=3, timestamp=0.1)
        assert len(result.persons) == expected, name
        assert (result.width, result.height) == (image.shape[1], image.shape[0])
        d = result.to_dict()
        validate_frame_dict(d, num_keypoints=133)
        for p in result.persons:
            c, s = G.box_to_center_scale(p.bbox[None], est.info.input_size)
            lo, hi = c[0] - s[0] / 2, c[0] + s[0] / 2
            valid = p.keypoint_scores > 0
            assert valid.any()
            k = p.keypoints[valid]
            assert (k >= lo - 1e-3).all() and (k <= hi + 1e-3).all(), name
            assert (p.keypoints[~valid] == -1).all()


def test_batched_pose_call_equals_one_call_per_person(estimator):
    image = cv2.imread(str(IMAGES / "000000197388.jpg"))
    boxes, _, _ = estimator.detect(image)
    assert len(boxes) == 5
    batched_k, batched_s, _ = estimator.pose(image, boxes)
    for i, box in enumerate(boxes):
        k, s, _ = estimator.pose(image, box[None])
        np.testing.assert_allclose(k[0], batched_k[i], atol=1e-3)
        np.testing.assert_allclose(s[0], batched_s[i], rtol=1e-4, atol=1e-5)


def test_fixed_batch_engine_is_chunked_and_padded(models, estimator):
    image = cv2.imread(str(IMAGES / "000000197388.jpg"))
    fixed = PoseEstimator(DETECTORS["rawhead"], models["pose_fixed"])
    assert fixed.pose.engine.input_dims[0] == 2
    a, b = fixed(image), estimator(image)  # same seed → same weights; 5 persons = 2 + 2 + 1 (padded)
    for p, q in zip(a.persons, b.persons):
        np.testing.assert_allclose(p.keypoints, q.keypoints, atol=1e-3)


def test_cpu_flip_test_equals_the_in_graph_flip_test(models, estimator):
    image = cv2.imread(str(IMAGES / "000000196141.jpg"))
    boxes, _, _ = estimator.detect(image)
    crops, _, _ = estimator.pose.preprocess(image, boxes)
    cpu = PoseEstimator(DETECTORS["rawhead"], models["pose"], flip_test=True).pose.infer(crops)
    graph = run_chunked(estimator.pose.engine.__class__(models["pose_flip"]), crops)
    for axis in ("simcc_x", "simcc_y"):
        np.testing.assert_allclose(cpu[axis], graph[axis], rtol=1e-4, atol=1e-4 * np.abs(graph[axis]).max())


def test_rtmw3d_gives_camera_space_keypoints(models):
    est = PoseEstimator(DETECTORS["rawhead"], models["pose3d"], camera=G.Camera(1000.0, 1000.0))
    result = est(cv2.imread(str(IMAGES / "000000040083.jpg")))
    assert len(result.persons) == 2
    validate_frame_dict(result.to_dict(), num_keypoints=133)
    p = result.persons[0]
    assert p.keypoints_3d.shape == (133, 3)
    # Z is root depth ± z_range; X = (u − cx)/fx · Z
    z = p.keypoints_3d[:, 2]
    assert ((z > 5.14388 - 2.18) & (z < 5.14388 + 2.18)).all()
    u = p.keypoints[:, 0]
    np.testing.assert_allclose(p.keypoints_3d[:, 0], (u - 250.0) / 1000.0 * z, rtol=1e-4, atol=1e-4)


def test_zero_people_max_persons_and_odd_images(estimator, models):
    blank = np.full((240, 320, 3), 255, np.uint8)
    result = estimator(blank)
    assert result.persons == [] and result.to_dict()["persons"] == []
    few = PoseEstimator(DETECTORS["rawhead"], models["pose"], max_persons=2)
    image = cv2.imread(str(IMAGES / "000000197388.jpg"))
    full, cut = estimator(image), few(image)
    assert len(cut.persons) == 2 and cut.dropped_persons == 3
    assert [p.score for p in cut.persons] == sorted((p.score for p in full.persons), reverse=True)[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert len(estimator(gray).persons) == len(estimator(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)).persons)
    rgba = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    assert len(estimator(rgba).persons) == 5
    deep = image.astype(np.uint16) << 8
    assert len(estimator(deep).persons) == 5
    with pytest.raises(RtmwEdgeError):
        estimator(np.zeros((0, 0, 3), np.uint8))


def test_models_that_do_not_fit_together_are_clear_errors(models):
    with pytest.raises(RtmwEdgeError, match="not a person detector"):
        PoseEstimator(models["pose"], models["pose"])
    with pytest.raises(RtmwEdgeError, match="not a pose model"):
        PoseEstimator(DETECTORS["e2e"], DETECTORS["e2e"])
    with pytest.raises(RtmwEdgeError, match="detector, not a pose model"):
        resolve_model("rtmdet-nano-person", "pose")
    with pytest.raises(RtmwEdgeError, match="did you mean"):
        resolve_model("rtmw-m-256x19", "pose")


def test_registered_name_is_exported_once_into_the_cache(tmp_path, monkeypatch):
    """A registered name resolves to $RTMW_EDGE_HOME/onnx/NAME.onnx, exported from the cached checkpoint;
    without the checkpoint (no network here) the error says where to put it."""
    import torch

    from rtmw_edge.errors import DownloadError
    from rtmw_edge.models import create_model
    from rtmw_edge.models.checkpoint import save_checkpoint
    from rtmw_edge.onnx_meta import read_metadata
    from rtmw_edge.zoo import get_spec

    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path))
    spec = get_spec("rtmw-m-256x192")  # its official file name carries no hash, so our stand-in passes
    monkeypatch.setattr("rtmw_edge.downloads.download", lambda url, dest, **kw: (_ for _ in ()).throw(
        DownloadError(f"cannot download {url} (offline); without a network, download it elsewhere and place it "
                      f"at {dest}")))
    with pytest.raises(DownloadError, match="place it at .*checkpoints"):
        resolve_model(spec.name, "pose")
    torch.manual_seed(0)
    ckpt = tmp_path / "checkpoints" / spec.checkpoint_filename
    save_checkpoint(create_model(spec.name), ckpt)
    path = resolve_model(spec.name, "pose")
    assert path == tmp_path / "onnx" / f"{spec.name}.onnx"
    assert read_metadata(path)["name"] == spec.name
    mtime = path.stat().st_mtime_ns
    assert resolve_model(spec.name, "pose").stat().st_mtime_ns == mtime   # cached: not exported again


def test_tracking_keeps_ids_on_a_shifted_photo(models):
    est = PoseEstimator(DETECTORS["rawhead"], models["pose"], track=True)
    image = cv2.imread(str(IMAGES / "000000197388.jpg"))
    ids_by_x = []
    for t in range(6):
        shifted = cv2.warpAffine(image, np.float32([[1, 0, 4 * t], [0, 1, 2 * t]]), (image.shape[1], image.shape[0]),
                                 borderValue=(255, 255, 255))
        result = est(shifted, frame=t, timestamp=t / 30)
        ordered = sorted(result.persons, key=lambda p: p.bbox[0])
        ids_by_x.append([p.track_id for p in ordered])
    assert all(ids == ids_by_x[0] for ids in ids_by_x), ids_by_x
    assert len(set(ids_by_x[0])) == len(ids_by_x[0]) and None not in ids_by_x[0]


def test_cli_run_writes_every_output(models, tmp_path, capsys):
    out, coco, save = tmp_path / "out.jsonl", tmp_path / "coco.json", tmp_path / "annotated.jpg"
    code = main(["run", str(IMAGES / "000000196141.jpg"), "--det", str(DETECTORS["e2e"]), "--pose",
                 str(models["pose"]), "--out", str(out), "--coco", str(coco), "--save", str(save)])
    assert code == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    frame = json.loads(lines[0])
    validate_frame_dict(frame, num_keypoints=133)
    assert len(frame["persons"]) == GT_COUNTS["000000196141.jpg"]
    items = json.loads(coco.read_text())
    assert len(items) == len(frame["persons"]) and len(items[0]["keypoints"]) == 133 * 3
    drawn = cv2.imread(str(save))
    assert drawn is not None and drawn.shape == cv2.imread(str(IMAGES / "000000196141.jpg")).shape
    assert "4 person(s)" in capsys.readouterr().err  # stdout is kept for `--out -`


def test_cli_run_over_a_folder_and_a_video(models, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 425))
    image = cv2.imread(str(IMAGES / "000000000785.jpg"))
    for _ in range(4):
        writer.write(image)
    writer.release()
    out = tmp_path / "video.jsonl"
    assert main(["run", str(video), "--det", str(DETECTORS["rawhead"]), "--pose", str(models["pose"]),
                 "--out", str(out), "--save", str(tmp_path / "annotated.mp4"), "--track", "--smooth"]) == 0
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    assert [f["frame"] for f in frames] == [0, 1, 2, 3]
    assert all(len(f["persons"]) == 1 and f["persons"][0]["track_id"] == frames[0]["persons"][0]["track_id"]
               for f in frames)
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()
    assert main(["run", str(IMAGES), "--det", str(DETECTORS["rawhead"]), "--pose", str(models["pose"]),
                 "--save", str(tmp_path / "frames")]) == 0
    assert len(list((tmp_path / "frames").glob("*.jpg"))) == 5


def test_cli_bad_image_in_a_folder_is_skipped_counted_and_exits_1(models, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((IMAGES / "000000000785.jpg").read_bytes())
    (folder / "b.jpg").write_bytes((IMAGES / "000000040083.jpg").read_bytes()[:3000])  # truncated
    (folder / "c.jpg").write_bytes((IMAGES / "000000196141.jpg").read_bytes())
    out = tmp_path / "out.jsonl"
    args = ["--det", str(DETECTORS["rawhead"]), "--pose", str(models["pose"]), "--out", str(out)]
    assert main(["run", str(folder), *args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        f"warning: {folder / 'b.jpg'}: truncated JPEG (the file ends before its image data)"]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 unreadable image(s) skipped" in errors[0]
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    assert [f["source"] for f in frames] == ["a.jpg", "c.jpg"]   # the images after the bad one were processed
    assert [len(f["persons"]) for f in frames] == [GT_COUNTS["000000000785.jpg"], GT_COUNTS["000000196141.jpg"]]
    # --strict: the first bad file stops the run; the JSON lines keep the frame done and the error says so
    assert main(["run", str(folder), *args, "--strict"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "b.jpg" in err and "holds the 1 frame(s) done before the error" in err
    assert len(out.read_text().splitlines()) == 1


def test_cli_bad_input_is_one_line_and_leaves_no_output(models, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    args = ["--det", str(DETECTORS["rawhead"]), "--pose", str(models["pose"]), "--out", str(out)]
    assert main(["run", str(tmp_path / "missing.jpg"), *args]) == 1
    assert main(["run", str(IMAGES / "000000000785.jpg"), *args, "--save", str(tmp_path / "x.gif")]) == 2
    assert main(["run", str(IMAGES), *args, "--save", str(tmp_path / "one.jpg")]) == 2
    assert main(["run", str(IMAGES / "000000000785.jpg"), *args, "--plot-3d", str(tmp_path / "p.png")]) == 2
    assert "RTMW3D" in capsys.readouterr().err
    assert not out.exists()  # never a file under the requested name when the run could not start
    assert main(["run", str(IMAGES / "000000197388.jpg"), *args, "--max-persons", "2"]) == 0
    assert "kept the 2 highest scores" in capsys.readouterr().err


def test_cli_plot_3d(models, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "skeleton3d.png"
    assert main(["run", str(IMAGES / "000000000785.jpg"), "--det", str(DETECTORS["rawhead"]), "--pose",
                 str(models["pose3d"]), "--plot-3d", str(png), "--focal", "1000,1000"]) == 0
    assert cv2.imread(str(png)) is not None

"""Bring-your-own pose ONNX (rtmw_edge.pose_models): mmdeploy / rtmlib / mmpose layouts of the project's own
random-weight exports (tests/foreign_layouts.py) must give exactly the keypoints of our export of the same
weights, through the real pipeline on real photos; settings come from --pose-spec or the SDK JSON and are
never guessed; `models import` writes a self-describing copy and leaves the input alone."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import onnx
import pytest
from conftest import SHARED
from foreign_layouts import foreign_copy, write_sdk_json

from rtmw_edge.cli import main
from rtmw_edge.downloads import sha256_file
from rtmw_edge.errors import RtmwEdgeError, UsageError
from rtmw_edge.export import export_onnx
from rtmw_edge.onnx_meta import read_metadata
from rtmw_edge.pipeline import PoseEstimator
from rtmw_edge.pose_models import (
    PoseSettingsError,
    UnknownPoseModelError,
    inspect_pose,
    pose_metadata,
)
from rtmw_edge.zoo import get_spec

DET = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
IMAGES = SHARED / "images"
PHOTOS = ("000000040083.jpg", "000000197388.jpg")  # 2 and 5 persons


@pytest.fixture(scope="module")
def tiny_rtmw3d():
    """RTMW3D's head and codec on the t-size trunk at 256x192 (registered for this module only): the
    three-output layout at a fraction of RTMW3D-l's export and inference time."""
    from dataclasses import replace

    from rtmw_edge import zoo

    spec = replace(get_spec("rtmw3d-l-384x288"), name="rtmw3d-t-256x192-test", size="t", deepen=0.167, widen=0.375,
                   input_size=(192, 256), simcc_sigma=(4.9, 5.66, 6.0))
    zoo.register(spec)
    yield spec.name
    del zoo._REGISTRY[spec.name]


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_rtmw3d):
    """Our exports (seed 0): the reference every foreign layout must reproduce."""
    tmp = tmp_path_factory.mktemp("own")
    return {
        "rtmw-m": export_onnx("rtmw-m-256x192", tmp / "rtmw-m.onnx", random_init=True, progress=False),
        "rtmpose-t": export_onnx("rtmpose-t-256x192", tmp / "rtmpose-t.onnx", random_init=True, progress=False),
        "rtmpose-t-b1": export_onnx("rtmpose-t-256x192", tmp / "rtmpose-t-b1.onnx", random_init=True, batch=1,
                                    progress=False),
        "dwpose-t": export_onnx("dwpose-t-256x192", tmp / "dwpose-t.onnx", random_init=True, progress=False),
        "rtmw3d": export_onnx(tiny_rtmw3d, tmp / "rtmw3d.onnx", random_init=True, progress=False),
    }


@pytest.fixture(scope="module")
def images():
    return [cv2.imread(str(IMAGES / name)) for name in PHOTOS]


@pytest.fixture(scope="module")
def reference(own, images):
    """Results of our own export per model (computed once per model for all layouts)."""
    cache: dict[str, list] = {}

    def get(key: str, n: int = len(PHOTOS)) -> list:
        if key not in cache:
            est = PoseEstimator(DET, own[key])
            cache[key] = [est(image) for image in images]
        return cache[key][:n]

    return get


def _sdk(folder, name: str, **kw):
    spec = get_spec(name)
    return write_sdk_json(folder, input_size=spec.input_size, mean=spec.mean, std=spec.std,
                          sigma=spec.simcc_sigma[:2], **kw)


def _same_keypoints(a: PoseEstimator, expected: list, images) -> int:
    persons = 0
    for image, rb in zip(images, expected):
        ra = a(image)
        assert len(ra.persons) == len(rb.persons) > 0
        for p, q in zip(ra.persons, rb.persons):
            np.testing.assert_allclose(p.keypoints, q.keypoints, atol=1e-3)
            np.testing.assert_allclose(p.keypoint_scores, q.keypoint_scores, rtol=1e-4, atol=1e-5)
            if p.keypoints_3d is not None or q.keypoints_3d is not None:
                np.testing.assert_allclose(p.keypoints_3d, q.keypoints_3d, rtol=1e-4, atol=1e-4)
        persons += len(ra.persons)
    return persons


LAYOUTS = {
    # name: (own model, registered spec, how the foreign file is made, hint the test gives)
    "mmdeploy-sdk-rtmw": ("rtmw-m", "rtmw-m-256x192", "sdk", None),
    "rtmlib-zoo-dwpose133": ("dwpose-t", "dwpose-t-256x192", "plain", "spec"),
    "mmpose-export-symbolic-k": ("rtmw-m", "rtmw-m-256x192", "symbolic", "spec"),
    "mmpose-export-opaque-k-rtmpose17": ("rtmpose-t", "rtmpose-t-256x192", "opaque", "spec"),
    "static-batch-1-rtmpose17": ("rtmpose-t-b1", "rtmpose-t-256x192", "plain", "spec"),
    "mmdeploy-sdk-renamed-outputs-dwpose133": ("dwpose-t", "dwpose-t-256x192", "sdk-renamed", None),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_foreign_layout_gives_the_keypoints_of_our_export(layout, own, images, reference, tmp_path, caplog):
    key, spec, how, hint = LAYOUTS[layout]
    folder = tmp_path / layout
    if how == "sdk-renamed":  # mmdeploy's static SDK export: torch's tensor names, mapped in output_map
        path = foreign_copy(own[key], folder / "end2end.onnx", rename={"simcc_x": "output", "simcc_y": "700"})
        _sdk(folder, spec, output_map={"output": "simcc_x", "700": "simcc_y"}, output_names=["output", "700"])
    else:
        path = foreign_copy(own[key], folder / ("end2end.onnx" if how == "sdk" else "model.onnx"),
                            symbolic_k=how == "symbolic", opaque_k=how == "opaque")
        if how == "sdk":
            _sdk(folder, spec)
    assert read_metadata(path) is None
    with pytest.raises(PoseSettingsError) if hint else _nothing():  # a hint is needed exactly when no SDK JSON
        PoseEstimator(DET, path)
    caplog.set_level(logging.WARNING, logger="rtmw_edge")
    foreign = PoseEstimator(DET, folder if how.startswith("sdk") else path,
                            pose_spec=spec if hint else None)
    info = foreign.info
    assert (info.num_keypoints, info.input_size, info.split_ratio) == (get_spec(spec).num_keypoints, (192, 256), 2.0)
    assert info.swap_rb and info.mean == get_spec(spec).mean
    assert list(info.flip_indices) == get_spec(spec).flip_indices  # from the keypoint set of K (SDK) or the spec
    assert ("batching is off" in caplog.text) == (key == "rtmpose-t-b1")
    assert _same_keypoints(foreign, reference(key), images) == 7


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_rtmw3d_three_simcc_outputs(own, images, reference, tiny_rtmw3d, tmp_path):
    path = foreign_copy(own["rtmw3d"], tmp_path / "rtmw3d.onnx", opaque_k=True)
    sig = inspect_pose(path)
    assert sig.task == "pose3d" and sig.outputs == ("simcc_x", "simcc_y", "simcc_z")
    assert (sig.num_keypoints, sig.bins) == (133, (384, 512, 384))
    foreign = PoseEstimator(DET, path, pose_spec=tiny_rtmw3d)
    assert foreign.info.z_range == pytest.approx(2.1744869) and foreign.info.task == "pose3d"
    assert _same_keypoints(foreign, reference("rtmw3d"), images) == 7
    _sdk(tmp_path, tiny_rtmw3d, output_names=["simcc_x", "simcc_y", "simcc_z"], net="rtmw3d.onnx")
    with pytest.raises(PoseSettingsError, match="depth settings.*--pose-spec rtmw3d-l-384x288"):
        pose_metadata(path)  # the SDK JSON has no depth codec: only a spec can describe RTMW3D
    with pytest.raises(RtmwEdgeError, match="pose3d graph.*pose2d model"):
        pose_metadata(path, "rtmw-m-256x192")


def test_wrong_or_missing_settings_are_refused(own, tmp_path):
    path = foreign_copy(own["rtmpose-t"], tmp_path / "rtmpose-t.onnx", symbolic_k=True)
    with pytest.raises(PoseSettingsError) as err:
        pose_metadata(path)
    message = str(err.value)
    assert "--pose-spec" in message and "pipeline.json" in message and "\n" not in message
    assert isinstance(err.value, UsageError)
    # a --pose-spec that does not fit the graph is a usage error (exit 2), as a missing one is
    with pytest.raises(UsageError, match=r"192x256 \(w×h\) crops, --pose-spec rtmw-l-384x288 says 288x384"):
        pose_metadata(path, "rtmw-l-384x288")
    with pytest.raises(UsageError, match="17 keypoints, --pose-spec dwpose-t-256x192 has 133"):
        pose_metadata(path, "dwpose-t-256x192")
    with pytest.raises(UsageError, match="is a detector"):
        pose_metadata(path, "rtmdet-nano-person")
    with pytest.raises(RtmwEdgeError, match="did you mean"):
        pose_metadata(path, "rtmw-m-256x19")
    with pytest.raises(UnknownPoseModelError, match="not a pose model .*expected SimCC outputs"):
        pose_metadata(DET)
    # a detector that happens to be given as --pose: named as such, before any hint is asked for
    with pytest.raises(RtmwEdgeError, match="not a pose model.*1211"):
        PoseEstimator(DET, DET)


@pytest.mark.parametrize("change, message", [
    ({"to_rgb": False}, None),                                       # read, not refused: BGR order
    ({"split_ratio": 3.0}, r"bins \[384, 512\] do not fit 192x256 at split ratio 3"),
    ({"input_size": (288, 384)}, "192x256 .* crops, the SDK's pipeline.json says 288x384"),
    ({"decoder_size": (256, 256)}, "crop sizes disagree"),
    ({"padding": 1.5}, "padding"),
    ({"use_dark": True}, "use_dark"),
    ({"export_postprocess": True}, "export_postprocess"),
    ({"task": "Detector"}, "not a pose model's"),
    ({"flip_indices": [0, 1, 1]}, "not a permutation"),
])
def test_sdk_json_is_read_and_checked(change, message, own, tmp_path):
    path = foreign_copy(own["rtmw-m"], tmp_path / "end2end.onnx")
    spec = get_spec("rtmw-m-256x192")
    kw = {"input_size": spec.input_size, "mean": spec.mean, "std": spec.std, **change}
    write_sdk_json(tmp_path, **kw)
    if message is None:
        meta = pose_metadata(path)
        assert meta["color"] == "bgr" and meta["mean"] == list(spec.mean) and meta["imported"]["from"] == "mmdeploy-sdk"
        assert meta["name"] == "rtmw-m_simcc-cocktail14-256x192"  # detail.json's config
        return
    with pytest.raises(RtmwEdgeError, match=message) as err:
        pose_metadata(path)
    assert not isinstance(err.value, UsageError)  # SDK JSON that does not fit its graph: a broken input (exit 1)


def test_models_import_writes_a_self_describing_copy(own, images, reference, tmp_path, capsys):
    src = foreign_copy(own["dwpose-t"], tmp_path / "sdk" / "end2end.onnx", rename={"simcc_x": "output",
                                                                                   "simcc_y": "700"})
    _sdk(src.parent, "dwpose-t-256x192", output_map={"output": "simcc_x", "700": "simcc_y"})
    before = sha256_file(src)
    out = tmp_path / "dwpose-t.onnx"
    assert main(["models", "import", str(src.parent), "-o", str(out)]) == 0
    assert "settings from the SDK's pipeline.json" in capsys.readouterr().out
    assert sha256_file(src) == before  # the input is only read
    meta = read_metadata(out)
    assert meta["outputs"] == ["simcc_x", "simcc_y"] and meta["imported"]["sha256"] == before
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["simcc_x", "simcc_y"]
    alone = tmp_path / "alone" / "dwpose-t.onnx"  # the copy needs no hint anywhere, even away from the JSON
    alone.parent.mkdir()
    alone.write_bytes(out.read_bytes())
    assert _same_keypoints(PoseEstimator(DET, alone), reference("dwpose-t"), images) == 7
    # refusals: no hint, the input as output, already imported; nothing written
    plain = foreign_copy(own["rtmpose-t"], tmp_path / "plain.onnx")
    assert main(["models", "import", str(plain), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--pose-spec" in err and len(err.strip().splitlines()) == 1
    assert main(["models", "import", str(plain), "--spec", "rtmpose-t-256x192", "-o", str(plain)]) == 2
    assert main(["models", "import", str(out), "--spec", "dwpose-t-256x192", "-o", str(tmp_path / "y.onnx")]) == 2
    assert "already carries rtmw_edge metadata" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
    assert main(["models", "import", str(plain), "--spec", "rtmpose-t-256x192", "-o", str(tmp_path / "t.onnx")]) == 0
    assert read_metadata(tmp_path / "t.onnx")["imported"] == {
        "from": "pose-spec", "settings": "rtmpose-t-256x192", "file": "plain.onnx", "sha256": sha256_file(plain)}


def test_cli_run_with_pose_spec_and_without(own, tmp_path, capsys):
    """The Must-show case (with the smallest RTMPose here: same code path as RTMW): an mmdeploy-layout graph runs
    with --pose-spec; without it, one line and exit 2."""
    path = foreign_copy(own["rtmpose-t"], tmp_path / "rtmpose-t-256x192.onnx", symbolic_k=True)
    out = tmp_path / "out.jsonl"
    assert main(["run", str(IMAGES), "--det", str(DET), "--pose", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--pose-spec" in err and "pipeline.json" in err
    assert not out.exists()
    # a wrong one: caught before any frame, a usage error like the missing one (README: exit codes)
    assert main(["run", str(IMAGES), "--det", str(DET), "--pose", str(path), "--pose-spec", "dwpose-t-256x192",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--pose-spec dwpose-t-256x192" in err and "not the same" in err
    assert not out.exists() or out.read_text() == ""
    assert main(["run", str(IMAGES), "--det", str(DET), "--pose", str(path), "--pose-spec", "rtmpose-t-256x192",
                 "--out", str(out)]) == 0
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(frames) == 5 and sum(len(f["persons"]) for f in frames) == 13


def test_check_eval_and_calibrate_accept_a_foreign_graph(own, tmp_path):
    from rtmw_edge.calibrate.data import Source
    from rtmw_edge.calibrate.runner import CalibrateOptions, calibrate
    from rtmw_edge.check import check_model
    from rtmw_edge.evaluate import run_eval

    path = foreign_copy(own["rtmpose-t"], tmp_path / "rtmpose-t.onnx", symbolic_k=True)
    report = check_model(path, own["rtmpose-t"], IMAGES, max_samples=2, pose_spec="rtmpose-t-256x192")
    assert report.passed and report.keypoints["max_px"] == 0.0 and report.candidate == str(path)
    with pytest.raises(PoseSettingsError):
        check_model(path, own["rtmpose-t"], IMAGES, max_samples=2)
    ann = IMAGES / "test_coco.json"
    a, _ = run_eval(ann, IMAGES, path, gt_boxes=True, progress=False, pose_spec="rtmpose-t-256x192")
    b, _ = run_eval(ann, IMAGES, own["rtmpose-t"], gt_boxes=True, progress=False)
    assert a == b
    out = tmp_path / "int8.onnx"
    opts = CalibrateOptions(model=path, output=out, source=Source(images=IMAGES, coco=ann), num=4, augment=False,
                            bias_correction=False, holdout=0.0, cache=tmp_path / "cache", pose_spec="rtmpose-t-256x192")
    calibrate(opts)
    meta = read_metadata(out)  # the INT8 graph comes out self-describing
    assert meta["precision"] == "int8" and meta["name"] == "rtmpose-t-256x192" and meta["imported"]["file"] == path.name
    assert read_metadata(path) is None


def test_build_manifest_carries_the_description(own, tmp_path, monkeypatch):
    import sys

    from fake_tensorrt import make_fake_tensorrt

    from rtmw_edge.backends import tensorrt as trt_backend
    from rtmw_edge.engines import GpuInfo

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3.0.30"))
    path = foreign_copy(own["rtmpose-t"], tmp_path / "rtmpose-t.onnx", symbolic_k=True)
    with pytest.raises(PoseSettingsError):
        trt_backend.plan_build(path, tmp_path / "e.engine", gpu=GpuInfo("Orin", "8.7"))
    plan = trt_backend.plan_build(path, tmp_path / "e.engine", gpu=GpuInfo("Orin", "8.7"),
                                  pose_spec="rtmpose-t-256x192")
    assert plan.onnx_metadata["name"] == "rtmpose-t-256x192" and plan.onnx_metadata["task"] == "pose2d"
    assert [p.max for p in plan.profiles] == [(32, 3, 256, 192)]  # the pose default 1:8:32, not batch 1


def test_serve_names_its_configuration_key_for_a_foreign_pose_model(own, tmp_path, capsys):
    """The daemon has no --pose-spec option: its errors name [model] pose_spec, found by --check before it listens."""
    path = foreign_copy(own["rtmpose-t"], tmp_path / "pose.onnx")
    config = tmp_path / "daemon.toml"
    for spec, code, expected in ((None, 2, "give [model] pose_spec NAME"),
                                 ("dwpose-t-256x192", 2, "[model] pose_spec dwpose-t-256x192 has 133"),
                                 ("rtmpose-t-256x192", 0, None)):
        line = f'pose_spec = "{spec}"\n' if spec else ""
        config.write_text(f'[model]\ndet = "{DET}"\npose = "{path}"\n{line}[cameras.a]\nsource = "0"\n')
        assert main(["serve", "--config", str(config), "--check"]) == code, spec
        err = capsys.readouterr().err.strip()
        if expected:
            assert err.count("\n") == 0 and expected in err and "--pose-spec" not in err, err

"""Triton Inference Server: repository export (configs parsed with the protobuf tritonclient ships), a real
`tritonserver` from the nvidia-pytriton wheel on 127.0.0.1 serving the CPU-variant repository, `--backend triton`
against the local CPU pipeline, dynamic batching from the server's own metrics, and a server killed mid-run.

The server runs in the cached venv `rtmw-edge triton setup` builds (the README's test command runs it first);
start-up and teardown happen here, bounded in time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED
from fake_tensorrt import make_fake_tensorrt
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from rtmw_edge.backends import tensorrt as trt_backend
from rtmw_edge.backends.onnxruntime import OrtEngine
from rtmw_edge.cli import main
from rtmw_edge.detectors import inspect_detector
from rtmw_edge.engines import GpuInfo, manifest_path
from rtmw_edge.errors import RtmwEdgeError
from rtmw_edge.export import export_onnx
from rtmw_edge.pipeline import PoseEstimator, pose_info
from rtmw_edge.results import validate_frame_dict
from rtmw_edge.triton.client import TritonModelError, TritonPoseEstimator, TritonUnavailableError, parse_url
from rtmw_edge.triton.repository import PIPELINE_PARAMETER, load_pipeline_parameters
from rtmw_edge.triton.server import TritonServer, ensure_server_env, free_port

IMAGES = SHARED / "images"
RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
E2E = SHARED / "models" / "rtmdet-nano_person_e2e_dyn.onnx"
PHOTOS = sorted(p for p in IMAGES.glob("*.jpg"))
START_TIMEOUT = 150.0


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def params_of(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def dims(tensors) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in tensors}


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton-models")
    return {"pose": export_onnx("rtmw-m-256x192", tmp / "rtmw-m.onnx", random_init=True, progress=False),
            "det": export_onnx("rtmdet-nano-person", tmp / "rtmdet-nano.onnx", random_init=True, progress=False),
            "tmp": tmp}


# ----------------------------------------------------------------------------- export: engines → tensorrt_plan
@pytest.fixture
def engines(models, tmp_path, monkeypatch):
    """Engines + manifests made by the project's own builder, driven against the TensorRT stand-in."""
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3.0.30"))
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda device=0: GpuInfo("Orin", "8.7"))
    out = tmp_path / "engines"
    pose = trt_backend.build_engine(models["pose"], out / "rtmw-m.engine", batch="2:4:16", progress=False)
    det = trt_backend.build_engine(models["det"], out / "det.engine", progress=False)
    return {"pose": pose.engine_path, "det": det.engine_path}


def test_engine_inputs_write_tensorrt_plan_configs_that_parse(engines, models, tmp_path):
    repo = tmp_path / "repo"
    assert main(["triton", "export", "--det", str(engines["det"]), "--pose", str(engines["pose"]), "-o",
                 str(repo)]) == 0
    pose, det = parse_config(repo / "rtmw_pose" / "config.pbtxt"), parse_config(repo / "rtmw_detector" / "config.pbtxt")
    graph = OrtEngine(models["pose"])  # the ONNX the engine was built from: its outputs, without the batch
    assert pose.name == "rtmw_pose" and pose.platform == "tensorrt_plan"
    assert pose.max_batch_size == 16                                       # the build profile's max
    assert list(pose.dynamic_batching.preferred_batch_size) == [4, 16]     # its opt and max
    assert dims(pose.input) == {"input": [3, 256, 192]}
    assert dims(pose.output) == {o.name: list(o.shape[1:]) for o in graph.session.get_outputs()}
    assert {t.data_type for t in [*pose.input, *pose.output]} == {model_config_pb2.TYPE_FP32}
    assert params_of(pose) == {"rtmw_edge_tensorrt_version": "10.3.0.30", "rtmw_edge_gpu": "Orin (compute 8.7)"}
    text = (repo / "rtmw_pose" / "config.pbtxt").read_text()
    assert "# TensorRT 10.3.0.30 plan built for Orin (compute 8.7)" in text
    assert [g.kind for g in pose.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    # detector: its own profile, batch 1 (the builder's detector default), no batcher
    assert det.platform == "tensorrt_plan" and det.max_batch_size == 1 and not det.HasField("dynamic_batching")
    assert dims(det.input) == {"input": [3, 320, 320]}
    assert (repo / "rtmw_pose" / "1" / "model.plan").read_bytes() == engines["pose"].read_bytes()
    assert (repo / "rtmw_detector" / "1" / "model.plan").read_bytes() == engines["det"].read_bytes()
    # the pipeline: Python backend, inputs/outputs of the toolkit's results, its parameters = what the CPU path reads
    pipe = parse_config(repo / "rtmw_pipeline" / "config.pbtxt")
    assert pipe.backend == "python" and pipe.max_batch_size == 0
    assert {t.name for t in pipe.input if t.optional} == {"image", "encoded", "det_threshold", "max_persons", "camera"}
    assert dims(pipe.output) == {"boxes": [-1, 4], "scores": [-1], "keypoints": [-1, 133, 2],
                                 "keypoint_scores": [-1, 133], "dropped": [1]}
    params = load_pipeline_parameters(params_of(pipe)[PIPELINE_PARAMETER])
    assert params.info == pose_info(graph)
    assert params.signature == inspect_detector(models["det"])
    assert params.pose["max_batch"] == 16 and params.detector["model"] == "rtmw_detector"
    shim = (repo / "rtmw_pipeline" / "1" / "model.py").read_text()
    assert "from rtmw_edge.triton.models import PipelineModel" in shim


def test_rtmw3d_pipeline_declares_camera_space_keypoints(engines, tmp_path):
    assert main(["triton", "export", "--det", str(engines["det"]), "--pose", str(engines["pose"]), "-o",
                 str(tmp_path / "repo")]) == 0
    pipe = parse_config(tmp_path / "repo" / "rtmw_pipeline" / "config.pbtxt")
    raw = json.loads(params_of(pipe)[PIPELINE_PARAMETER])
    raw["pose"]["info"]["task"] = "pose3d"  # the same pipeline for an RTMW3D pose model
    from rtmw_edge.triton.repository import pipeline_config

    (tmp_path / "3d.pbtxt").write_text(pipeline_config(raw))
    outputs = dims(parse_config(tmp_path / "3d.pbtxt").output)
    assert outputs["keypoints_3d"] == [-1, 133, 3] and "keypoints_3d" not in dims(pipe.output)


def _bad_export(args, tmp_path, capsys, expected: str):
    target = tmp_path / "bad-repo"
    before = set(tmp_path.iterdir())
    code = main(["triton", "export", *args, "-o", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:") and expected in err[0], err
    assert not target.exists() and set(tmp_path.iterdir()) == before  # nothing written, no temp folder left


def test_missing_or_mismatched_inputs_write_nothing(engines, models, tmp_path, capsys):
    det, pose = str(engines["det"]), str(engines["pose"])
    _bad_export(["--det", str(tmp_path / "missing.engine"), "--pose", pose], tmp_path, capsys, "not found")
    _bad_export(["--det", pose, "--pose", pose], tmp_path, capsys, "is a pose2d model")
    _bad_export(["--det", det, "--pose", det], tmp_path, capsys, "is a detector")
    _bad_export(["--det", str(models["pose"]), "--pose", pose], tmp_path, capsys, "pose model")
    _bad_export(["--det", det, "--pose", pose, "--cpu"], tmp_path, capsys, "--cpu")
    _bad_export(["--det", det, "--pose", pose, "--pose-batch", "1:8:32"], tmp_path, capsys, "build profile")
    # an engine changed after its build, and one without a manifest
    changed = tmp_path / "changed.engine"
    changed.write_bytes(engines["pose"].read_bytes() + b"x")
    manifest_path(changed).write_text(manifest_path(engines["pose"]).read_text())
    _bad_export(["--det", det, "--pose", str(changed)], tmp_path, capsys, "does not match its manifest")
    manifest_path(changed).unlink()
    _bad_export(["--det", det, "--pose", str(changed)], tmp_path, capsys, "no manifest")
    # the output: not over an existing repository without --force, never over a folder holding an input
    (tmp_path / "bad-repo").mkdir()
    (tmp_path / "bad-repo" / "keep.txt").write_text("mine")
    code = main(["triton", "export", "--det", det, "--pose", pose, "-o", str(tmp_path / "bad-repo")])
    assert code == 2 and "--force" in capsys.readouterr().err
    assert tree(tmp_path / "bad-repo") == {"keep.txt"}
    code = main(["triton", "export", "--det", det, "--pose", pose, "-o", str(engines["det"].parent), "--force"])
    assert code == 2 and "holds the input" in capsys.readouterr().err
    assert engines["det"].is_file() and engines["pose"].is_file()


def test_onnx_inputs_write_onnxruntime_configs(models, tmp_path):
    repo = tmp_path / "repo"
    assert main(["triton", "export", "--det", str(E2E), "--pose", str(models["pose"]), "-o", str(repo),
                 "--pose-batch", "2:8:24", "--instances", "3"]) == 0
    pose, det = parse_config(repo / "rtmw_pose" / "config.pbtxt"), parse_config(repo / "rtmw_detector" / "config.pbtxt")
    assert pose.platform == det.platform == "onnxruntime_onnx"
    assert pose.max_batch_size == 24 and list(pose.dynamic_batching.preferred_batch_size) == [8, 24]
    assert det.max_batch_size == 1 and dims(det.input) == {"input": [3, -1, -1]}  # dynamic H/W kept dynamic
    declared = {o.name: [d if isinstance(d, int) else -1 for d in o.shape[1:]]
                for o in OrtEngine(E2E).session.get_outputs()}                  # as the graph declares them
    assert set(declared) == {"dets", "labels"} and dims(det.output) == declared
    assert [g.count for g in parse_config(repo / "rtmw_pipeline" / "config.pbtxt").instance_group] == [3]
    assert tree(repo) == {"rtmw_detector", "rtmw_detector/config.pbtxt", "rtmw_detector/1",
                          "rtmw_detector/1/model.onnx", "rtmw_pose", "rtmw_pose/config.pbtxt", "rtmw_pose/1",
                          "rtmw_pose/1/model.onnx", "rtmw_pipeline", "rtmw_pipeline/config.pbtxt", "rtmw_pipeline/1",
                          "rtmw_pipeline/1/model.py"}
    mode = 0o777 & ~_umask()
    assert (repo.stat().st_mode & 0o777) == mode and ((repo / "rtmw_pose").stat().st_mode & 0o777) == mode
    # --force replaces the repository as a whole
    assert main(["triton", "export", "--det", str(RAWHEAD), "--pose", str(models["pose"]), "-o", str(repo),
                 "--cpu", "--force"]) == 0
    det = parse_config(repo / "rtmw_detector" / "config.pbtxt")
    assert det.backend == "python" and det.max_batch_size == 0 and dims(det.input) == {"images": [1, 3, 320, 320]}
    assert "OnnxRuntimeModel" in (repo / "rtmw_detector" / "1" / "model.py").read_text()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_url_parsing_and_unreachable_server(capsys):
    assert (parse_url("127.0.0.1:9001").protocol, parse_url("127.0.0.1:9001").port) == ("grpc", 9001)
    assert parse_url("grpc://gpu-server").port == 8001
    assert (parse_url("http://gpu-server:8000/").protocol, parse_url("http://gpu-server:8000/").host) == \
        ("http", "gpu-server")
    for bad in ("ftp://x:1", "host:port", "host:70000"):
        with pytest.raises(Exception, match="--triton-url"):
            parse_url(bad)
    port = free_port()
    t = time.monotonic()
    with pytest.raises(TritonUnavailableError, match=f"127.0.0.1:{port}"):
        TritonPoseEstimator(f"127.0.0.1:{port}", retries=2, backoff=0.05, timeout=2)
    assert time.monotonic() - t < 20
    photo = str(PHOTOS[0])
    assert main(["run", photo, "--backend", "triton"]) == 2        # usage errors, before any work
    assert "--triton-url" in capsys.readouterr().err
    assert main(["run", photo, "--backend", "onnxruntime", "--triton-url", f"127.0.0.1:{port}"]) == 2
    assert "does not go with --backend onnxruntime" in capsys.readouterr().err
    assert main(["run", photo, "--triton-url", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not answering" in err[0] and "HTTP" in err[0]


# ------------------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def cpu_repository(models):
    repo = models["tmp"] / "repo-cpu"
    assert main(["triton", "export", "--det", str(RAWHEAD), "--pose", str(models["pose"]), "-o", str(repo), "--cpu",
                 "--threads", "2"]) == 0
    return repo


def _start(repository: Path, log: Path) -> TritonServer:
    env = ensure_server_env()  # cached (rtmw-edge triton setup); built here when missing
    server = TritonServer(repository, http_port=0, grpc_port=0, metrics_port=0, env=env, log_path=log)
    server.start(timeout=START_TIMEOUT)
    return server


@pytest.fixture(scope="module")
def server(cpu_repository, models):
    server = _start(cpu_repository, models["tmp"] / "server.log")
    print(f"tritonserver ready in {server.startup_seconds:.1f} s")
    yield server
    server.stop(grace=20)


@pytest.fixture(scope="module")
def local(models):
    est = PoseEstimator(RAWHEAD, models["pose"])
    return {p.name: est(cv2.imread(str(p))) for p in PHOTOS}


def test_remote_run_equals_local_cpu_pipeline(server, local, tmp_path):
    out = tmp_path / "remote.jsonl"
    assert main(["run", str(IMAGES), "--backend", "triton", "--triton-url", server.grpc_url, "--out", str(out)]) == 0
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(frames) == len(PHOTOS)
    for photo, frame in zip(PHOTOS, frames):
        validate_frame_dict(frame, num_keypoints=133)
        ref = local[photo.name]
        assert len(frame["persons"]) == len(ref.persons) > 0, photo.name
        assert (frame["width"], frame["height"]) == (ref.width, ref.height)
        for got, want in zip(frame["persons"], ref.persons):
            assert np.abs(np.array(got["bbox"]) - want.bbox).max() <= 0.01  # JSON rounds to 0.01 px
            assert np.abs(np.array(got["keypoints"]) - want.keypoints).max() <= 0.005 + 1e-6

    # unrounded, through the API: keypoints within 1e-3 px, scores equal; HTTP and JPEG-free raw frames
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        remote = TritonPoseEstimator(url, max_persons=32, det_threshold=0.3)
        for photo in PHOTOS:
            got, want = remote(cv2.imread(str(photo)), frame=7), local[photo.name]
            assert got.frame == 7 and len(got.persons) == len(want.persons), (protocol, photo.name)
            for g, w in zip(got.persons, want.persons):
                assert np.abs(g.keypoints - w.keypoints).max() <= 1e-3
                assert np.abs(g.keypoint_scores - w.keypoint_scores).max() <= 1e-5
                assert np.abs(g.bbox - w.bbox).max() <= 1e-3 and abs(g.score - w.score) <= 1e-6
        remote.close()


def test_per_request_options_and_bad_frames(server, local):
    crowd = next(p for p in PHOTOS if len(local[p.name].persons) >= 4)
    image = cv2.imread(str(crowd))
    two = TritonPoseEstimator(server.grpc_url, max_persons=2)(image)
    assert len(two.persons) == 2 and two.dropped_persons == len(local[crowd.name].persons) - 2
    assert [p.score for p in two.persons] == pytest.approx([p.score for p in local[crowd.name].persons[:2]])
    strict = TritonPoseEstimator(server.grpc_url, det_threshold=0.99)(image)
    assert len(strict.persons) == 0
    jpeg = TritonPoseEstimator(server.grpc_url, encoding="jpeg")(image)  # lossy: same people, near keypoints
    assert len(jpeg.persons) == len(local[crowd.name].persons)
    tracked = TritonPoseEstimator(server.grpc_url, track=True)
    ids = [[p.track_id for p in tracked(image, i, i / 30).persons] for i in range(2)]
    assert ids[0] == ids[1] and None not in ids[0]
    from tritonclient.grpc import InferenceServerClient, InferInput

    client = InferenceServerClient(server.grpc_url)
    junk = InferInput("encoded", [16], "UINT8")
    junk.set_data_from_numpy(np.arange(16, dtype=np.uint8))
    with pytest.raises(Exception, match="not an image"):
        client.infer("rtmw_pipeline", [junk])
    assert len(TritonPoseEstimator(server.grpc_url)(image).persons) > 0  # the model is still up
    with pytest.raises(TritonModelError, match=r"no model 'rtmw_other'.*rtmw_detector, rtmw_pipeline, rtmw_pose"):
        TritonPoseEstimator(server.grpc_url, model="rtmw_other")
    with pytest.raises(TritonModelError, match="not an rtmw-edge pipeline model"):
        TritonPoseEstimator(server.grpc_url, model="rtmw_pose")
    with pytest.raises(RtmwEdgeError, match="without flip test"):
        TritonPoseEstimator(server.grpc_url, flip_test=True)


def test_serve_names_the_model_that_fails_to_load(cpu_repository, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(cpu_repository, broken, copy_function=os.symlink)
    (broken / "rtmw_pose" / "1" / "model.onnx").unlink()
    (broken / "rtmw_pose" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    t = time.monotonic()
    code = main(["triton", "serve", "--repository", str(broken), "--grpc-port", "0", "--http-port", "0",
                 "--metrics-port", "0", "--log", str(tmp_path / "server.log"), "--timeout", "120"])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(errors) == 1, errors
    assert "model rtmw_pose: " in errors[0] and "is not a readable ONNX model" in errors[0]
    assert time.monotonic() - t < 120


def _metrics(server: TritonServer, model: str) -> dict[str, float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("nv_inference_") and f'model="{model}"' in line:
            values[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return values


def test_four_cameras_are_batched_by_the_pose_model(server, local):
    crowd = next(p for p in PHOTOS if len(local[p.name].persons) >= 4)
    image, persons = cv2.imread(str(crowd)), len(local[crowd.name].persons)
    before = _metrics(server, "rtmw_pose")
    errors = []

    def camera() -> None:
        try:
            est = TritonPoseEstimator(server.grpc_url)
            for _ in range(2):
                assert len(est(image).persons) == persons
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=camera) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    after = _metrics(server, "rtmw_pose")
    requests = after["nv_inference_request_success"] - before.get("nv_inference_request_success", 0)
    executions = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0)
    inferences = after["nv_inference_count"] - before.get("nv_inference_count", 0)
    assert requests == 8 and inferences == 8 * persons   # every frame's persons, counted by Triton
    assert executions < requests                          # some executions merged requests of several cameras


def test_server_killed_mid_run_keeps_frames_and_exits_with_one_line(cpu_repository, local, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(60):  # a long source: the same photos over and over
        (frames / f"{i:03d}_{PHOTOS[i % len(PHOTOS)].name}").symlink_to(PHOTOS[i % len(PHOTOS)])
    server = _start(cpu_repository, tmp_path / "server.log")
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "rtmw_edge.cli", "run", str(frames), "--backend", "triton", "--triton-url",
           server.grpc_url, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        written = lambda: len(out.read_text().splitlines()) if out.is_file() else 0  # noqa: E731
        while written() < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert written() >= 3, "the run did not get going"
        server.kill()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop(grace=5)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error:") and "not answering" in lines[0], stderr
    assert "Traceback" not in stderr
    assert [p.name for p in tmp_path.glob("*out.jsonl*")] == ["out.jsonl"]  # streamed under its own name
    done = [json.loads(line) for line in out.read_text().splitlines()]
    assert 3 <= len(done) < 60 and f"holds the {len(done)} frame(s) done" in lines[0]
    names = sorted(frames.iterdir())
    for i, frame in enumerate(done):
        assert frame["frame"] == i
        ref = local[names[i].resolve().name]
        assert len(frame["persons"]) == len(ref.persons)
        for got, want in zip(frame["persons"], ref.persons):
            assert np.abs(np.array(got["keypoints"]) - want.keypoints).max() <= 0.005 + 1e-6


class _StoppingServer:
    """What a Triton server answers while it stops gracefully: models unloaded first ("unknown model"), the server
    no longer ready (seen on the real server of the test below: the request fails, then /v2/health/ready is not 200)."""

    def __init__(self, ready: bool) -> None:
        self.ready = ready

    def infer(self, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        raise InferenceServerException("Request for unknown model: 'rtmw_pipeline' is not found",
                                       status="StatusCode.NOT_FOUND")

    def is_server_ready(self, **kwargs):
        return self.ready

    def is_model_ready(self, *args, **kwargs):
        return self.ready


def _estimator_on(client) -> TritonPoseEstimator:
    import tritonclient.grpc

    est = TritonPoseEstimator.__new__(TritonPoseEstimator)
    est.url, est.model = parse_url("127.0.0.1:8001"), "rtmw_pipeline"
    est._module, est._client = tritonclient.grpc, client
    est.timeout, est.retries, est.backoff, est.encoding = 1.0, 0, 0.0, "raw"
    est.det_threshold = est.max_persons = est.camera = None
    return est


def test_a_server_stopping_mid_run_is_named_as_such_not_as_an_unknown_model():
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(TritonUnavailableError, match=r"stopped serving 'rtmw_pipeline' at frame 5 \(it is shutting "
                                                      r"down or restarting\)"):
        _estimator_on(_StoppingServer(ready=False))(image, frame=5)
    with pytest.raises(TritonModelError, match="unknown model") as err:  # a server that is up: the model's own error
        _estimator_on(_StoppingServer(ready=True))(image, frame=5)
    assert "stopped serving" not in str(err.value)


@pytest.mark.slow  # its own server (~20 s); the test above pins the rule with the answers this one sees
def test_a_server_stopped_mid_run_is_reported_as_stopping(cpu_repository, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(200):
        (frames / f"{i:03d}.jpg").symlink_to(PHOTOS[0])
    server = _start(cpu_repository, tmp_path / "server.log")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "rtmw_edge.cli", "run", str(frames), "--backend", "triton",
                             "--triton-url", server.grpc_url, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (not out.is_file() or len(out.read_text().splitlines()) < 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop()  # SIGTERM: a graceful stop, models unloaded first
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, err
    assert "stopped serving 'rtmw_pipeline'" in lines[0] or "not answering" in lines[0], lines[0]


def test_bench_times_the_remote_path_beside_the_local_one(server, models, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--det", str(RAWHEAD), "--pose", str(models["pose"]), "--backend", "auto", "--backend",
                 "triton", "--triton-url", server.grpc_url, "--persons", "1,2", "--frames", "2", "--out",
                 str(out), "--ann", str(SHARED / "images" / "test_coco.json")]) == 0
    local_cfg, remote_cfg = json.loads(out.read_text())["configs"]
    assert remote_cfg["backend"] == "triton" and remote_cfg["pose_model"] == local_cfg["pose_model"]
    assert [p["persons_detected"] for p in remote_cfg["curve"]] == [p["persons_detected"] for p in
                                                                    local_cfg["curve"]] == [1, 2]
    assert all(p["stages_ms"] == {} and p["end_to_end_ms"]["p50"] > 0 for p in remote_cfg["curve"])
    assert main(["bench", "--backend", "triton", "--images", str(SHARED / "images")]) == 2  # no server given


def test_daemon_cameras_go_to_the_server(server, local, tmp_path):
    pytest.importorskip("aiohttp", reason="the daemon needs the 'serve' extra")
    from test_serve_support import collect_ws, config_from

    from rtmw_edge.serve.daemon import DaemonThread

    photo = next(p for p in PHOTOS if len(local[p.name].persons) >= 4)
    toml = (f'[server]\nport = 0\n[model]\nbackend = "triton"\ntriton_url = "{server.grpc_url}"\ntrack = true\n'
            f'[cameras.door]\nsource = "{photo}"\nloop = true\n')
    before = _metrics(server, "rtmw_pipeline").get("nv_inference_request_success", 0)
    with DaemonThread(config_from(tmp_path, toml)) as d:
        frames = collect_ws(d.port, "door", 3, timeout=90)
        assert d.daemon.backend_report()["active"] == "triton (remote)"  # honest reporting: the server runs det + pose
    after = _metrics(server, "rtmw_pipeline")["nv_inference_request_success"]
    ref = local[photo.name]
    for f in frames:
        validate_frame_dict(f, num_keypoints=133)
        assert f["camera"] == "door" and len(f["persons"]) == len(ref.persons)
        assert all(p["track_id"] is not None for p in f["persons"])  # the worker's per-camera tracker
        for got, want in zip(f["persons"], ref.persons):
            assert np.abs(np.array(got["keypoints"]) - want.keypoints).max() <= 0.005 + 1e-6
    assert after - before >= 3  # the frames went through the server
    with pytest.raises(Exception, match="go together"):
        config_from(tmp_path, '[model]\nbackend = "triton"\n[cameras.door]\nsource = "0"\n')


@pytest.mark.slow  # exports RTMW3D-l and starts its own server (~2 min); fast: tests/test_triton_pinned.py (camera)
def test_rtmw3d_remote_equals_local(models, tmp_path):
    pose3d = export_onnx("rtmw3d-l-384x288", tmp_path / "rtmw3d.onnx", random_init=True, progress=False)
    repo = tmp_path / "repo3d"
    assert main(["triton", "export", "--det", str(RAWHEAD), "--pose", str(pose3d), "-o", str(repo), "--cpu"]) == 0
    server = _start(repo, tmp_path / "server.log")
    try:
        from rtmw_edge.geometry import Camera

        camera = Camera(900.0, 900.0, 300.0, 200.0)
        remote = TritonPoseEstimator(server.grpc_url, camera=camera)
        est = PoseEstimator(RAWHEAD, pose3d, camera=camera)
        for photo in PHOTOS[:2]:
            image = cv2.imread(str(photo))
            got, want = remote(image), est(image)
            assert len(got.persons) == len(want.persons) > 0
            for g, w in zip(got.persons, want.persons):
                assert np.abs(g.keypoints - w.keypoints).max() <= 1e-3
                assert np.abs(g.keypoints_3d - w.keypoints_3d).max() <= 1e-3
    finally:
        server.stop()

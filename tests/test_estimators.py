"""One backend table, one factory, shared models with per-stream state (issue 22 items 1–4, CPU side).

- The table (`rtmw_edge.backends.BACKENDS`) is the only list of backend names: a grep over the package finds no
  other; the CLI help, the daemon's configuration and the table agree; what it says about this machine is
  checked against independent facts (ONNX Runtime's own version; CUDA's own device query).
- `open_estimator` is the one place a backend becomes a pipeline: each name reaches its pipeline's class (the
  CUDA-stream one through a recording stand-in, since no GPU is here), and options a pipeline cannot honour
  are refused in one line before any model loads.
- Streams: two streams over one model — two cameras with different people — give each camera exactly the
  results it gets alone (track ids, smoothed keypoints, skip-frame schedule), on a synthetic model whose
  detector finds real bright blobs in the frames, on the real CPU pipeline, and in the daemon's worker.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import SHARED
from fake_tensorrt import make_fake_tensorrt

import rtmw_edge
from rtmw_edge import backends as B
from rtmw_edge import estimators as E
from rtmw_edge.backends import tensorrt as trt_backend
from rtmw_edge.cli import main
from rtmw_edge.errors import MissingDependencyError, RtmwEdgeError, UsageError
from rtmw_edge.export import export_onnx
from rtmw_edge.pipeline import PoseEstimator, PoseModel
from rtmw_edge.results import FrameResult, Person
from rtmw_edge.streams import CallStream, FrameTail, PoseStream, open_stream

ROOT = Path(__file__).resolve().parents[1]
DET = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
NAMES = ("auto", "onnxruntime", "tensorrt", "torch-cuda", "onnxruntime-gpu", "triton")


# ------------------------------------------------------------------------------------------ the table
def test_one_backend_table_and_no_other_list_of_backend_names():
    assert tuple(B.BACKENDS) == NAMES  # the names the issue lists, in one place
    assert {b.pipeline for b in B.BACKENDS.values()} == {"auto", "cpu", "cuda-stream", "remote"}
    quoted = re.compile('"(' + '|'.join(map(re.escape, NAMES)) + ')"')
    offenders = []
    for path in sorted((ROOT / "rtmw_edge").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"^\s*[A-Z_]*BACKENDS\b\s*[:=]", text, re.M):
            offenders.append(f"{path.relative_to(ROOT)}: {m.group(0).strip()}")
        # any tuple / list / set literal naming three or more backends is a second list
        for m in re.finditer(r"[(\[{]([^()\[\]{}]*)[)\]}]", text):
            if len(set(quoted.findall(m.group(1)))) >= 3:
                offenders.append(f"{path.relative_to(ROOT)}: {m.group(0)[:80]}")
    assert offenders == ["rtmw_edge/backends/__init__.py: BACKENDS:"], offenders


def test_commands_and_the_daemon_config_take_their_names_from_the_table(tmp_path, capsys):
    from test_serve_support import config_from

    from rtmw_edge.serve.config import ConfigError

    for command in ("run", "bench", "eval"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for name in NAMES:
            if command != "eval" or name != "triton":
                assert name in text, (command, name)
    assert main(["eval", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Which pipeline runs: with --det, the one --backend means" in text
    assert "tensorrt, torch-cuda, onnxruntime-gpu: the CUDA-stream pipeline" in text
    camera = '[cameras.a]\nsource = "0"\n'
    for name in NAMES:
        url = 'triton_url = "127.0.0.1:8001"\n' if name == "triton" else ""
        assert config_from(tmp_path, f'[model]\nbackend = "{name}"\n{url}{camera}').model.backend == name
    with pytest.raises(ConfigError, match="must be one of auto, onnxruntime, tensorrt, torch-cuda, onnxruntime-gpu"):
        config_from(tmp_path, f'[model]\nbackend = "cuda"\n{camera}')
    # skip-frame detection needs the CPU pipeline: refused at load for the backends whose pipeline detects always
    for name in ("tensorrt", "torch-cuda", "onnxruntime-gpu"):
        with pytest.raises(ConfigError, match="det_interval"):
            config_from(tmp_path, f'[model]\nbackend = "{name}"\ndet_interval = 5\n{camera}')
    assert config_from(tmp_path, f'[model]\nbackend = "auto"\ndet_interval = 5\n{camera}').model.det_interval == 5
    assert main(["run", "x.jpg", "--backend", "cuda"]) == 2
    assert "--backend must be one of auto, onnxruntime, tensorrt" in capsys.readouterr().err


def test_availability_here_against_the_machines_own_answers():
    import onnxruntime

    from rtmw_edge.cuda.runtime import device_available

    ort = B.availability("onnxruntime")
    assert ort.available and ort.version == onnxruntime.__version__ and ort.pipeline == "cpu"
    assert B.availability("auto").available
    gpu, why = device_available(0)
    if gpu:
        pytest.skip(f"a CUDA GPU is here ({why}): the no-GPU answers do not apply")
    for name in ("tensorrt", "torch-cuda", "onnxruntime-gpu"):
        row = B.availability(name)
        assert not row.available and row.pipeline == "cuda-stream", name
        # TensorRT not installed: the one wording build, selftest and run share, the missing GPU named first
        first = "this needs TensorRT: no NVIDIA GPU" if name == "tensorrt" else f"--backend {name} cannot run here: "\
                                                                                "no CUDA GPU"
        with pytest.raises(MissingDependencyError, match=first):
            row.require()
    assert B.availability("triton").available == (B._present("tritonclient.grpc") or B._present("tritonclient.http"))
    with pytest.raises(UsageError, match="unknown backend 'cuda'; choose one of auto, onnxruntime"):
        B.availability("cuda")


def test_availability_names_every_missing_piece(monkeypatch):
    monkeypatch.setattr(B, "_gpu_missing", lambda: [])  # a GPU and cuda-python
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3.0.30"))
    row = B.availability("tensorrt")
    assert (row.available, row.version, row.reason) == (True, "10.3.0.30", None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed, a GPU there: how to install it
    monkeypatch.setattr(trt_backend, "gpu_visible", lambda: True)
    row = B.availability("tensorrt")
    assert not row.available and row.reason.startswith("this needs TensorRT, which is not installed")
    monkeypatch.setattr(trt_backend, "gpu_visible", lambda: False)   # no GPU: said first, before any install
    reason = B.availability("tensorrt").reason
    assert reason.startswith("this needs TensorRT: no NVIDIA GPU") and reason.index("GPU") < reason.index("pip")
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3.0.30"))  # installed, no GPU
    monkeypatch.setattr(B, "_gpu_missing", lambda: ["no CUDA GPU (test)"])
    assert B.availability("tensorrt").reason == "no CUDA GPU (test)"


def test_host_engines_come_from_the_table(tmp_path, onnx_pair):
    pose = onnx_pair["pose"]
    from rtmw_edge.backends.onnxruntime import OrtEngine

    assert isinstance(B.load_engine(pose), OrtEngine) and isinstance(B.load_engine(pose, "onnxruntime"), OrtEngine)
    engine = tmp_path / "pose.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(RtmwEdgeError, match="is a TensorRT engine: use --backend tensorrt"):
        B.load_engine(engine, "onnxruntime")
    with pytest.raises(RtmwEdgeError, match="--backend triton has no host engine"):
        B.load_engine(pose, "triton")
    with pytest.raises(RtmwEdgeError, match="no device engine"):
        B.load_device_engine(pose, "onnxruntime")


# ------------------------------------------------------------------------------------------ the factory
class RecordingGpuEstimator:
    """Stands in for `cuda.gpu_pipeline.GpuPoseEstimator` where no GPU is: records how the factory built it and runs
    the frames on the CPU pipeline over ONNX files (for `run`, which streams two frames in flight)."""

    built: list = []
    pipeline = "cuda-stream"  # what `estimators.pipeline_of` reads (the real class: from its module)

    def __init__(self, det, pose, *, backend, **options) -> None:
        RecordingGpuEstimator.built.append((Path(det).name, Path(pose).name, backend, options))
        self.cpu = PoseEstimator(self.onnx[0], self.onnx[1], threads=1) if self.onnx else None
        self.info = self.cpu.info if self.cpu else None
        self.det_engine, self.pose_engine = _FakeTrtEngine(), _FakeTrtEngine()
        self.timings = SimpleNamespace(summary=lambda: {"detector": 1.5, "pose": 2.5})

    onnx: tuple | None = None

    def __call__(self, image, frame=0, timestamp=0.0):
        if self.cpu is not None:
            return self.cpu(image, frame, timestamp)
        h, w = image.shape[:2]
        person = Person(np.array([1, 2, w - 1, h - 2], np.float32), 0.9, np.zeros((17, 2), np.float32),
                        np.full(17, 0.8, np.float32))
        return FrameResult(frame, timestamp, w, h, [person])

    def stream(self, frames):
        for f in frames:
            yield f, self(f.image, f.index, f.timestamp)


_FakeTrtEngine = type("TensorRTEngine", (), {"__module__": "rtmw_edge.backends.tensorrt"})


@pytest.fixture
def gpu_here(monkeypatch):
    """The tensorrt backend available (a GPU and cuda-python, the TensorRT stand-in) and the GPU pipeline's class
    replaced by the recorder."""
    monkeypatch.setattr(B, "_gpu_missing", lambda: [])
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3.0.30"))
    monkeypatch.setattr(E, "GpuPoseEstimator", RecordingGpuEstimator)
    RecordingGpuEstimator.built = []
    RecordingGpuEstimator.onnx = None
    return RecordingGpuEstimator


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("factory")
    return {"det": DET, "pose": export_onnx("rtmpose-t-256x192", tmp / "pose.onnx", random_init=True, progress=False),
            "pose_flip": export_onnx("rtmpose-t-256x192", tmp / "pose-flip.onnx", random_init=True, flip_test=True,
                                     progress=False), "tmp": tmp}


def _engines(tmp_path, onnx_pair, flip: bool = False) -> tuple[Path, Path]:
    """Engine files with manifests naming the ONNX they were built from (and its metadata, as `build` writes)."""
    from rtmw_edge.engines import manifest_path
    from rtmw_edge.onnx_meta import read_metadata

    out = []
    for role, onnx in (("det", onnx_pair["det"]), ("pose", onnx_pair["pose_flip" if flip else "pose"])):
        engine = tmp_path / f"{role}{'-flip' if flip else ''}.engine"
        engine.write_bytes(b"plan")
        manifest_path(engine).write_text(json.dumps({"cache_key": "test", "onnx": {
            "path": str(onnx), "metadata": read_metadata(onnx)}}))
        out.append(engine)
    return out[0], out[1]


def test_each_backend_name_reaches_its_pipeline(gpu_here, onnx_pair, tmp_path):
    det, pose = _engines(tmp_path, onnx_pair)
    onnx_det, onnx_pose = onnx_pair["det"], onnx_pair["pose"]
    def choose(*args, **kwargs):
        choice = E.choose_pipeline(*args, **kwargs)
        return choice.backend, choice.pipeline
    assert choose(onnx_det, onnx_pose, "onnxruntime") == ("onnxruntime", "cpu")
    assert choose(onnx_det, onnx_pose, "auto") == ("auto", "cpu")          # ONNX files: the CPU pipeline
    assert choose(det, onnx_pose, "auto") == ("auto", "cpu")               # mixed: the CPU pipeline
    assert choose(det, pose, "auto") == ("tensorrt", "cuda-stream")       # engines and a GPU
    assert choose(det, pose, "tensorrt") == ("tensorrt", "cuda-stream")
    assert choose(None, None, "triton") == ("triton", "remote")
    # auto leaves the CUDA-stream pipeline for the options only the CPU pipeline honours, and says why
    by_interval = E.choose_pipeline(det, pose, "auto", det_interval=5)
    assert (by_interval.backend, by_interval.pipeline) == ("auto", "cpu") and "det_interval 5" in by_interval.why
    assert choose(det, pose, "auto", flip_test=True) == ("auto", "cpu")   # flip test on the host
    flip_det, flip_pose = _engines(tmp_path, onnx_pair, flip=True)
    assert choose(flip_det, flip_pose, "auto", flip_test=True) == ("tensorrt", "cuda-stream")  # in the graph
    # explicit CUDA-stream backends refuse what they cannot do, in one line, before loading anything
    with pytest.raises(UsageError, match="det_interval 5: skip-frame detection runs in the CPU pipeline"):
        choose(det, pose, "tensorrt", det_interval=5)
    with pytest.raises(UsageError, match="export the pose model with --flip-test") as flip:
        choose(det, pose, "tensorrt", flip_test=True)
    assert "\n" not in str(flip.value)
    choose(flip_det, flip_pose, "tensorrt", flip_test=True)  # in the graph: fine
    # the factory builds exactly that
    est = E.open_estimator(det, pose, "tensorrt", max_persons=4, cuda_graphs=True)
    assert isinstance(est, RecordingGpuEstimator)
    assert gpu_here.built[-1] == ("det.engine", "pose.engine", "tensorrt",
                                  {"max_persons": 4, "cuda_graphs": True})
    E.open_estimator(det, pose)  # auto
    assert gpu_here.built[-1][2] == "tensorrt" and len(gpu_here.built) == 2
    assert E.active_backends(est) == {"det": "tensorrt", "pose": "tensorrt", "pipeline": "cuda-stream"}
    assert E.backend_summary(E.active_backends(est)) == "tensorrt (cuda-stream)"
    from rtmw_edge.cuda.gpu_pipeline import GpuPoseEstimator

    assert E.pipeline_of(GpuPoseEstimator.__new__(GpuPoseEstimator)) == "cuda-stream"
    cpu = E.open_estimator(onnx_det, onnx_pose, "onnxruntime", threads=1)
    assert type(cpu) is PoseEstimator and E.backend_summary(E.active_backends(cpu)) == "onnxruntime (cpu)"
    with pytest.raises(UsageError, match="cuda_graphs applies to the CUDA-stream pipeline"):
        E.open_estimator(onnx_det, onnx_pose, "onnxruntime", cuda_graphs=True)
    with pytest.raises(UsageError, match="triton_url applies to the remote pipeline"):
        E.open_estimator(onnx_det, onnx_pose, "onnxruntime", triton_url="127.0.0.1:8001")
    with pytest.raises(UsageError, match="unknown estimator option"):
        E.open_estimator(onnx_det, onnx_pose, "onnxruntime", batch=3)
    assert len(gpu_here.built) == 2  # nothing else reached the GPU pipeline


def test_a_cuda_stream_backend_that_cannot_run_here_says_why(onnx_pair, tmp_path, monkeypatch):
    monkeypatch.setattr(B, "_gpu_missing", lambda: ["no CUDA GPU (test)"])
    det, pose = _engines(tmp_path, onnx_pair)
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3.0.30"))
    for name in ("tensorrt", "torch-cuda", "onnxruntime-gpu"):
        with pytest.raises(MissingDependencyError, match=f"--backend {name} cannot run here: no CUDA GPU"):
            E.open_estimator(det, pose, name)
    with pytest.raises(MissingDependencyError, match="--backend auto: det.engine and pose.engine are TensorRT "
                                                     "engines, and the tensorrt backend cannot run here: no CUDA GPU"):
        E.open_estimator(det, pose)  # auto with engines: they need TensorRT and a GPU whatever the pipeline


def test_run_with_backend_tensorrt_runs_the_cuda_stream_pipeline(gpu_here, onnx_pair, tmp_path):
    det, pose = _engines(tmp_path, onnx_pair)
    gpu_here.onnx = (onnx_pair["det"], onnx_pair["pose"])
    photo = SHARED / "images" / "000000197388.jpg"
    out_gpu, out_cpu = tmp_path / "gpu.jsonl", tmp_path / "cpu.jsonl"
    assert main(["run", str(photo), "--det", str(det), "--pose", str(pose), "--backend", "tensorrt", "--threads",
                 "1", "--out", str(out_gpu)]) == 0
    assert [b[2] for b in gpu_here.built] == ["tensorrt"]
    assert main(["run", str(photo), "--det", str(onnx_pair["det"]), "--pose", str(onnx_pair["pose"]), "--backend",
                 "onnxruntime", "--threads", "1", "--out", str(out_cpu)]) == 0
    assert out_gpu.read_text() == out_cpu.read_text() and len(json.loads(out_gpu.read_text())["persons"]) == 5


# ------------------------------------------------------------------------------------------ streams
class BlobModel:
    """A model for the stream protocol whose detector really looks at the frame: every bright rectangle is a
    person (score: its brightness); its pose puts 17 keypoints along the diagonal of the blob inside the box
    (score 0.9), or scores 0 when the box holds no blob — as a real pose model loses a person its box missed."""

    kpt_threshold = 0.3
    camera = None

    def __init__(self) -> None:
        self.detector_calls = 0

    @staticmethod
    def _blobs(image):
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        contours, _ = cv2.findContours((gray > 100).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes = []
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            boxes.append(([x, y, x + w, y + h], float(gray[y:y + h, x:x + w].mean()) / 255))
        return sorted(boxes, key=lambda b: -b[1])

    def detect(self, image):
        self.detector_calls += 1
        found = self._blobs(image)
        boxes = np.array([b for b, _ in found], np.float32).reshape(-1, 4)
        return boxes, np.array([s for _, s in found], np.float32), 0

    def pose(self, image, boxes, camera=None):
        kpts = np.zeros((len(boxes), 17, 2), np.float32)
        scores = np.zeros((len(boxes), 17), np.float32)
        blobs = [np.array(b, np.float32) for b, _ in self._blobs(image)]
        for i, box in enumerate(boxes):
            inside = [b for b in blobs if b[0] >= box[0] - 1 and b[1] >= box[1] - 1 and b[2] <= box[2] + 1
                      and b[3] <= box[3] + 1]
            if inside:
                kpts[i] = np.linspace(inside[0][:2], inside[0][2:], 17)
                scores[i] = 0.9
        return kpts, scores, None


def _camera_frames(people: list[tuple[int, int, int, int, int]], motion: tuple[int, int], n: int = 12):
    """N frames 320×240 with bright rectangles (x, y, w, h, brightness) moving by MOTION per frame."""
    frames = []
    for t in range(n):
        image = np.zeros((240, 320, 3), np.uint8)
        for x, y, w, h, level in people:
            x0, y0 = x + motion[0] * t, y + motion[1] * t
            image[y0:y0 + h, x0:x0 + w] = level
        frames.append(image)
    return frames


CAMERAS = {"a": _camera_frames([(10, 20, 30, 80, 250), (120, 40, 40, 90, 200), (230, 30, 30, 70, 160)], (4, 1)),
           "b": _camera_frames([(60, 10, 50, 60, 220)], (2, 6))}
STREAM = dict(track=True, smooth=True, det_interval=3)


def _signature(result: FrameResult):
    return [(p.track_id, np.round(p.bbox, 3).tolist(), np.round(p.keypoints, 3).tolist()) for p in result.persons]


def test_two_streams_over_one_model_equal_each_camera_alone():
    alone = {}
    for name in CAMERAS:
        stream = PoseStream(BlobModel(), **STREAM)
        alone[name] = ([_signature(stream.step(f, t, t / 10)) for t, f in enumerate(CAMERAS[name])],
                       stream.skip.detector_runs)
    model = BlobModel()
    streams = {name: PoseStream(model, **STREAM) for name in CAMERAS}
    together = {name: [] for name in CAMERAS}
    for t in range(len(CAMERAS["a"])):
        for name in ("b", "a") if t % 2 else ("a", "b"):  # interleaved, in changing order
            together[name].append(_signature(streams[name].step(CAMERAS[name][t], t, t / 10)))
    for name in CAMERAS:
        assert together[name] == alone[name][0], name
        assert streams[name].skip.detector_runs == alone[name][1], name
    assert model.detector_calls == alone["a"][1] + alone["b"][1] < 2 * len(CAMERAS["a"])  # frames were skipped
    assert {p[0] for p in together["a"][-1]} == {0, 1, 2} and {p[0] for p in together["b"][-1]} == {0}
    assert len(together["a"][-1]) == 3 and len(together["b"][-1]) == 1


def test_estimator_streams_over_the_real_cpu_pipeline(onnx_pair):
    est = PoseEstimator(onnx_pair["det"], onnx_pair["pose"], threads=1, track=True)
    assert isinstance(est, PoseModel) and est.pipeline == "cpu"
    photos = {name: cv2.imread(str(SHARED / "images" / photo))
              for name, photo in (("a", "000000197388.jpg"), ("b", "000000000785.jpg"))}

    def frame(name, t):
        image = photos[name]
        return cv2.warpAffine(image, np.float32([[1, 0, 3 * t], [0, 1, 2 * t]]), (image.shape[1], image.shape[0]),
                              borderValue=(255, 255, 255))

    alone = {name: [_signature(s.step(frame(name, t), t, t / 30)) for t in range(3)]
             for name, s in ((n, est.open_stream(track=True)) for n in photos)}
    streams = {name: est.open_stream(track=True) for name in photos}
    together = {name: [] for name in photos}
    for t in range(3):
        for name in photos:
            together[name].append(_signature(streams[name].step(frame(name, t), t, t / 30)))
    assert together == alone
    assert len(alone["a"][0]) == 5 and len(alone["b"][0]) == 1 and alone["b"][-1][0][0] == 0
    # the estimator's own stream is one more stream: model + one stream, as before
    own = [_signature(est(frame("b", t), t, t / 30)) for t in range(3)]
    assert own == alone["b"]
    assert est.tracker is not None and est.skip is None


def test_frame_tail_hand_computed_and_the_trackers_clock():
    tail = FrameTail(track=True)
    boxes = np.array([[0, 0, 10, 20], [50, 50, 70, 90]], np.float32)
    kpts = np.stack([np.linspace(b[:2], b[2:], 17) for b in boxes]).astype(np.float32)
    scores = np.full((2, 17), 0.9, np.float32)
    first = tail(boxes, np.array([0.9, 0.8], np.float32), kpts, scores, None, 3, frame=7, timestamp=1.5, width=100,
                 height=120)
    assert (first.frame, first.timestamp, first.width, first.height, first.dropped_persons) == (7, 1.5, 100, 120, 3)
    assert [p.track_id for p in first.persons] == [0, 1] and first.persons[1].score == pytest.approx(0.8)
    np.testing.assert_array_equal(first.persons[1].keypoints, kpts[1])
    # the second frame lists the same two people the other way round: the ids follow the people
    second = tail(boxes[::-1] + 1, np.array([0.8, 0.9], np.float32), kpts[::-1] + 1, scores, None, 0, frame=8,
                  timestamp=1.6, width=100, height=120)
    assert [p.track_id for p in second.persons] == [1, 0]
    seen = []
    tail.tracker = SimpleNamespace(update=lambda persons, t: (seen.append(t), persons)[1], reset=lambda: None)
    tail(boxes, np.ones(2, np.float32), kpts, scores, frame=9, timestamp=99.0, width=100, height=120, clock=2.0)
    tail(boxes, np.ones(2, np.float32), kpts, scores, frame=10, timestamp=5.0, width=100, height=120)
    assert seen == [2.0, 5.0]  # the monotonic clock when given (a wall-clock step never reaches the smoother)
    assert FrameTail().tracker is None


def test_one_call_models_and_plain_callables_get_streams():
    class OneCall:  # infer only (the Triton client's shape): detects every frame
        camera = "default-camera"

        def __init__(self):
            self.cameras = []

        def infer(self, image, camera):
            self.cameras.append(camera)
            return BlobModel().detect(image)[:2] + (np.zeros((1, 17, 2), np.float32), np.ones((1, 17), np.float32),
                                                    None, 0)

    model = OneCall()
    stream = open_stream(model, camera="cam-1")
    assert isinstance(stream, PoseStream) and not stream.split
    stream.step(CAMERAS["b"][0])
    open_stream(model).step(CAMERAS["b"][0])
    assert model.cameras == ["cam-1", "default-camera"]
    with pytest.raises(UsageError, match="detects on every frame"):
        open_stream(model, det_interval=2)

    calls = []

    def plain(image, frame=0, timestamp=0.0):
        calls.append(frame)
        return FrameResult(frame, timestamp, 320, 240, [Person(np.array([0, 0, 9, 9], np.float32), 0.9,
                                                               np.zeros((17, 2), np.float32), np.ones(17, np.float32))])

    stream = open_stream(plain, track=True)
    assert isinstance(stream, CallStream)
    assert [stream.step(CAMERAS["a"][0], t).persons[0].track_id for t in range(3)] == [0, 0, 0] and calls == [0, 1, 2]
    stream.reset()
    assert stream.step(CAMERAS["a"][0], 3).persons[0].track_id == 0
    with pytest.raises(UsageError, match="detects on every frame"):
        open_stream(plain, det_interval=3)


# ------------------------------------------------------------------------------------------ the daemon
def test_daemon_cameras_keep_their_own_streams_over_one_model():
    pytest.importorskip("prometheus_client", reason="the daemon needs the 'serve' extra")
    from rtmw_edge.serve.metrics import Metrics
    from rtmw_edge.serve.worker import InferenceWorker

    alone = {}
    for name in CAMERAS:
        worker = InferenceWorker(BlobModel(), [], Metrics(), lambda p: None, det_interval=3, track=True, smooth=True)
        cam = SimpleNamespace(name=name, intrinsics=None)
        alone[name] = [_signature(worker._step(cam, SimpleNamespace(image=f, seq=t, wall=t / 10, mono=t / 10,
                                                                    generation=0)))
                       for t, f in enumerate(CAMERAS[name])]
    model = BlobModel()
    worker = InferenceWorker(model, [], Metrics(), lambda p: None, det_interval=3, track=True, smooth=True)
    cams = {name: SimpleNamespace(name=name, intrinsics=None) for name in CAMERAS}
    together = {name: [] for name in CAMERAS}
    for t in range(len(CAMERAS["a"])):
        for name in CAMERAS:
            frame = SimpleNamespace(image=CAMERAS[name][t], seq=t, wall=t / 10, mono=t / 10, generation=0)
            together[name].append(_signature(worker._step(cams[name], frame)))
    assert together == alone
    assert worker.stream_of("a") is not worker.stream_of("b") and worker.stream_of("a").model is model
    # a camera replaced by a reload gets a new stream, the old one is closed; a removed camera's stream too
    closed = []
    old = worker.stream_of("a")
    old.close = lambda: closed.append("a")
    replaced = SimpleNamespace(name="a", intrinsics=None)
    worker._step(replaced, SimpleNamespace(image=CAMERAS["a"][0], seq=0, wall=0.0, mono=0.0, generation=0))
    assert closed == ["a"] and worker.stream_of("a") is not old
    worker.stream_of("b").close = lambda: closed.append("b")
    worker._close_streams(keep=[replaced])
    assert closed == ["a", "b"] and worker.stream_of("b") is None and worker.stream_of("a") is not None


def test_pipeline_stage_timings_reach_metrics():
    pytest.importorskip("prometheus_client", reason="the daemon needs the 'serve' extra")
    from rtmw_edge.serve.metrics import Metrics
    from rtmw_edge.serve.worker import InferenceWorker

    metrics = Metrics()
    timed = SimpleNamespace(timings=SimpleNamespace(summary=lambda: {"detector": 1.25, "pose": 4.0}))
    worker = InferenceWorker(timed, [], metrics, lambda p: None)
    metrics.watch_pipeline_stages(worker.pipeline_timings)
    text = metrics.exposition()[0].decode()
    assert 'rtmw_edge_pipeline_stage_median_seconds{camera="all",stage="pose"} 0.004' in text
    assert 'rtmw_edge_pipeline_stage_median_seconds{camera="all",stage="detector"} 0.00125' in text
    worker._streams["front"] = (None, 0, SimpleNamespace(timings=SimpleNamespace(summary=lambda: {"crops": 0.5})))
    assert worker.pipeline_timings() == {"front": {"crops": 0.5}}  # per camera stream when the streams time


def test_daemon_with_backend_tensorrt_runs_the_cuda_stream_pipeline(gpu_here, onnx_pair, tmp_path, caplog):
    pytest.importorskip("aiohttp", reason="the daemon needs the 'serve' extra")
    import logging

    from test_serve_support import collect_ws, config_from, http_json, metric, metrics, wait_for, write_video

    from rtmw_edge.serve.daemon import DaemonThread

    det, pose = _engines(tmp_path, onnx_pair)
    clip = write_video(tmp_path / "clip.avi", (96, 72), fps=10, gray_frames=5)
    cams = "".join(f'[cameras.{n}]\nsource = "{clip}"\nloop = true\n' for n in ("a", "b"))
    cfg = config_from(tmp_path, f'[server]\nport = 0\n[model]\ndet = "{det}"\npose = "{pose}"\n'
                                f'backend = "tensorrt"\ntrack = true\n{cams}')
    with caplog.at_level(logging.INFO, logger="rtmw_edge.serve"), DaemonThread(cfg) as d:
        wait_for(lambda: http_json(d.port, "/readyz")[1]["engines_loaded"], 30, what="engines loaded")
        backend = http_json(d.port, "/readyz")[1]["backend"]
        frames = {n: collect_ws(d.port, n, 2, timeout=30) for n in ("a", "b")}
        samples = metrics(d.port)
    assert backend == {"requested": "tensorrt", "active": "tensorrt (cuda-stream)", "det": "tensorrt",
                       "pose": "tensorrt", "pipeline": "cuda-stream", "fallback_reason": None}
    assert [b[2] for b in gpu_here.built] == ["tensorrt"]  # one shared estimator for both cameras
    assert all(f["camera"] == n and f["persons"][0]["track_id"] == 0 for n in frames for f in frames[n])
    assert metric(samples, "rtmw_edge_pipeline_stage_median_seconds", camera="all", stage="pose") == 0.0025
    loaded = next(r for r in caplog.records if getattr(r, "event", "") == "engines_loaded")
    assert "backend tensorrt (cuda-stream)" in loaded.getMessage()


# ------------------------------------------------------------------------------------------ the package
def test_the_package_exports_the_factory_lazily():
    code = ("import sys, rtmw_edge; light = not any(m in sys.modules for m in ('cv2', 'onnxruntime', 'rtmw_edge."
            "pipeline')); from rtmw_edge import open_estimator, PoseEstimator, FrameResult; "
            "from rtmw_edge.estimators import open_estimator as f; print(light, open_estimator is f)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr
    assert rtmw_edge.open_estimator is E.open_estimator and "open_estimator" in dir(rtmw_edge)
    with pytest.raises(AttributeError):
        rtmw_edge.no_such_name  # noqa: B018


def test_readme_first_python_example_is_the_three_line_estimator():
    block = re.search(r"```python\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S).group(1)
    code = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 4 and "from rtmw_edge import open_estimator" in code[0], block
    assert any("= open_estimator(" in line for line in code) and any("estimator(" in line for line in code[2:])
    names = re.findall(r"from rtmw_edge import (\w+)", block)
    assert all(hasattr(rtmw_edge, n) for n in names)


# ------------------------------------------------------------------------------------------ lifetimes
def test_run_and_eval_close_the_estimator_they_opened(onnx_pair, tmp_path, monkeypatch):
    """Engines (a TensorRT engine's contexts, CUDA stream and buffers; a GPU pipeline's streams) are released by
    the command that opened them, in order — not left to the garbage collector at exit."""
    import rtmw_edge.run as run_module
    from rtmw_edge.evaluate import run_eval

    opened = []

    def recording(*args, **kwargs):
        estimator = E.open_estimator.__wrapped__(*args, **kwargs)
        closed = estimator.close
        estimator.close = lambda: (opened.append("closed"), closed())
        opened.append("opened")
        return estimator
    recording.__wrapped__ = E.open_estimator
    monkeypatch.setattr(E, "open_estimator", recording)
    monkeypatch.setattr(run_module, "open_estimator", recording)
    photo = SHARED / "images" / "000000000785.jpg"
    assert main(["run", str(photo), "--det", str(onnx_pair["det"]), "--pose", str(onnx_pair["pose"]), "--backend",
                 "onnxruntime", "--threads", "1", "--out", str(tmp_path / "o.jsonl")]) == 0
    assert opened == ["opened", "closed"]
    opened.clear()
    run_eval(SHARED / "images" / "test_coco_wholebody.json", SHARED / "images", onnx_pair["pose"],
             det=onnx_pair["det"], backend="onnxruntime", progress=False)
    assert opened == ["opened", "closed"]


def test_a_cpu_model_closes_the_engines_it_holds():
    closed = []
    engine = lambda name: SimpleNamespace(close=lambda: closed.append(name))  # noqa: E731
    model = PoseModel.__new__(PoseModel)
    model.detector, model.pose = SimpleNamespace(engine=engine("det")), SimpleNamespace(engine=engine("pose"))
    with model:
        pass
    assert closed == ["det", "pose"]

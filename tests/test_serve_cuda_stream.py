"""The camera daemon on the CUDA-stream pipeline, on the CPU: the emulated CUDA runtime (tests/emulated_cuda.py)
under the real daemon, its engines the project's own device engines in CPU mode (the pose model on the PyTorch
path — the zoo's module the export was made from — and the detector through onnxruntime-gpu's I/O binding),
deferred on the emulated streams. Two cameras (a video of the shared photos and one of a single photo) give the
same persons, frame by frame, as the CPU daemon on the same files; the worker's ticks run on the camera batch
(`multicam.GpuStreamBatch`): a lane per camera — its own CUDA stream and detector context — and one batched pose
side; the lanes' GPU stage timings reach /metrics per camera; the honest report says `(cuda-stream)`."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from conftest import SHARED
from emulated_cuda import Deferred, Emulator
from kernel_devices import pipelines_agree

from rtmw_edge import backends as B
from rtmw_edge import estimators as E
from rtmw_edge.cuda import gpu_pipeline as P
from rtmw_edge.results import Person

RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
pytestmark = [pytest.mark.skipif(not RAWHEAD.is_file(), reason="shared detector not found"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
pytest.importorskip("aiohttp", reason="the daemon needs the 'serve' extra")
pytest.importorskip("cuda.bindings.runtime")


@pytest.fixture
def emulated_gpu(monkeypatch):
    """torch-cuda runs here: the emulated GPU, the project's engines in CPU mode as deferred work."""
    from rtmw_edge.backends.onnxruntime_gpu import OrtGpuEngine
    from rtmw_edge.backends.torch_cuda import TorchCudaEngine

    emu = Emulator(seed=21, policy="eager").install(monkeypatch)
    made = []

    def device_engine(path, device=0, **options):
        engine = OrtGpuEngine(path, device="cpu") if path.name == RAWHEAD.name else \
            TorchCudaEngine(path, device="cpu")
        made.append(Deferred(emu, engine))
        return made[-1]
    row = B.BACKENDS["torch-cuda"]
    monkeypatch.setitem(B.BACKENDS, "torch-cuda", dataclasses.replace(
        row, probe=lambda: ("emulated", []), device_engine=device_engine))
    monkeypatch.setattr(B, "_gpu_missing", lambda: [])

    class Rounding(P.GpuPoseEstimator):
        """The kernels round sampled values as the CPU pipeline's uint8 images are (the comparison rule of
        docs/gpu-validation.md: boxes ≤ 0.5 px needs the same letterbox gray levels)."""

        def __init__(self, *args, **options) -> None:
            super().__init__(*args, **{**options, "match_cpu_rounding": True})
    monkeypatch.setattr(E, "GpuPoseEstimator", Rounding)
    return emu, made


def person_from(d: dict) -> Person:
    return Person(bbox=np.asarray(d["bbox"], np.float32), score=d["score"],
                  keypoints=np.asarray(d["keypoints"], np.float32),
                  keypoint_scores=np.asarray(d["keypoint_scores"], np.float32))


def run_daemon(folder, backend: str, pose, videos: dict, per_camera: int) -> tuple[dict, dict, dict]:
    from test_serve_support import collect_ws, config_from, http_json, metrics, wait_for

    from rtmw_edge.serve.daemon import DaemonThread

    folder.mkdir(parents=True, exist_ok=True)
    cams = "".join(f'[cameras.{n}]\nsource = "{v}"\nloop = true\nrealtime = false\n' for n, v in videos.items())
    cfg = config_from(folder, f'[server]\nport = 0\n[model]\ndet = "{RAWHEAD}"\npose = "{pose}"\n'
                              f'backend = "{backend}"\n{cams}')
    with DaemonThread(cfg) as d:
        wait_for(lambda: http_json(d.port, "/readyz")[1].get("engines_loaded"), 120, what="engines loaded")
        report = http_json(d.port, "/readyz")[1]["backend"]
        frames = {n: collect_ws(d.port, n, per_camera, timeout=300) for n in videos}
        samples = metrics(d.port)
    return report, frames, samples


def test_the_daemon_on_the_cuda_stream_pipeline_equals_the_cpu_daemon(tmp_path, emulated_gpu, random_export):
    from test_serve_support import write_video

    emu, made = emulated_gpu
    pose = random_export("rtmpose-t-256x192")
    single = tmp_path / "single.avi"
    writer = cv2.VideoWriter(str(single), cv2.VideoWriter_fourcc(*"MJPG"), 10, (480, 320))
    image = cv2.resize(cv2.imread(str(SHARED / "images" / "000000040083.jpg")), (480, 320))
    for _ in range(3):
        writer.write(image)
    writer.release()
    videos = {"street": write_video(tmp_path / "street.avi", (640, 426), frames_per_image=1), "pair": single}
    gpu_report, gpu, samples = run_daemon(tmp_path / "gpu", "torch-cuda", pose, videos, per_camera=6)
    assert gpu_report["active"] == "det onnxruntime-gpu, pose torch-cuda (cuda-stream)"
    assert gpu_report["pipeline"] == "cuda-stream" and gpu_report["requested"] == "torch-cuda"
    estimators = {type(e).__name__ for e in made}
    assert estimators == {"Deferred"} and len(made) == 2                         # one shared model
    contexts = [c for e in made for c in e.contexts]
    assert len({c.stream for c in contexts}) == 3 and len(contexts) == 3         # a lane per camera (its stream and
    assert [len(e.contexts) for e in made] == [2, 1]                              # detector context), one pose side
    stage = [v for (name, labels), v in samples.items() if name == "rtmw_edge_pipeline_stage_median_seconds"
             and dict(labels).get("stage") == "detector"]
    assert len(stage) == 2 and all(v > 0 for v in stage)                         # per camera, from CUDA events
    assert set(emu.leaks().values()) == {0}, emu.leaks()   # the stopped daemon closed its streams and model: every
    assert all(e.closed for e in made)                     # CUDA stream, event, graph, buffer and engine released
    cpu_report, cpu, _ = run_daemon(tmp_path / "cpu", "onnxruntime", pose, videos, per_camera=6)
    assert cpu_report["active"] == "onnxruntime (cpu)"
    pairs, compared = [], 0
    for name in ("street", "pair"):
        want = {f["frame"] % (5 if name == "street" else 3): f for f in cpu[name]}
        for f in gpu[name]:
            other = want.get(f["frame"] % (5 if name == "street" else 3))
            if other is None:
                continue
            compared += 1
            assert len(f["persons"]) == len(other["persons"]), (name, f["frame"])
            pairs += [(person_from(a), person_from(b)) for a, b in zip(other["persons"], f["persons"])]
    assert compared >= 6 and len(pairs) >= 6
    pipelines_agree(pairs)                                     # boxes ≤ 0.5 px, keypoint medians ≤ 0.5 px
    assert isinstance(P.GpuPoseEstimator, type)

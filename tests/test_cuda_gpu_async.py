"""The asynchrony scenarios of tests/test_cuda_async.py on a real GPU (`pytest -m gpu`; skipped elsewhere): the
same pipeline rules, now with real streams, events and engines (the PyTorch path: TensorRT is not needed), so
that what the emulator proves on the CPU is seen on CUDA itself — and, under compute-sanitizer, by its racecheck
and synccheck. Every scenario compares with the same frames run one at a time (independent of overlap)."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from conftest import SHARED
from kernel_devices import gpu_or_skip, real_detector_export

pytestmark = pytest.mark.gpu

RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
NAMES = ("human-pose.jpg", "000000040083.jpg", "000000197388.jpg")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    gpu_or_skip()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("the torch engines need a CUDA build of PyTorch")
    if not RAWHEAD.is_file():
        pytest.skip("shared RTMDet raw-head detector not found")
    from rtmw_edge.backends.torch_cuda import TorchCudaEngine
    from rtmw_edge.cuda.gpu_pipeline import GpuPoseModel
    from rtmw_edge.export import export_onnx

    folder = tmp_path_factory.mktemp("gpu_async")
    pose = export_onnx("rtmpose-t-256x192", folder / "t.onnx", random_init=True, progress=False)
    det, det_model = real_detector_export(folder, RAWHEAD)
    m = GpuPoseModel(det, pose, backend="torch-cuda", max_persons=4,
                     det_engine=TorchCudaEngine(det, model=det_model, device=0))
    yield m
    m.close()


def images() -> list[np.ndarray]:
    return [cv2.imread(str(SHARED / "images" / n)) for n in NAMES]


def same(a, b) -> None:
    assert len(a.persons) == len(b.persons)
    for p, q in zip(a.persons, b.persons):
        np.testing.assert_array_equal(p.keypoints, q.keypoints)
        np.testing.assert_array_equal(p.bbox, q.bbox)


def test_two_frames_in_flight_equal_one_at_a_time_with_changing_person_counts(model):
    stream = model.open_stream()
    frames = [images()[i % 3] for i in range(12)]
    serial = [stream(f) for f in frames]
    for want, (_, got) in zip(serial, stream.stream(frames)):
        same(want, got)
    stream.close()


def test_device_frames_from_a_busy_producer_stream(model):
    import torch

    stream = model.open_stream()
    image = images()[0]
    want = stream(image)
    producer = torch.cuda.Stream()
    from rtmw_edge.cuda.gpu_pipeline import DeviceFrame

    with torch.cuda.stream(producer):
        big = torch.randn(4096, 4096, device="cuda")
        for _ in range(20):                       # keep the producer busy so a missing wait would read early
            big = big @ big / 4096
        frame = torch.from_numpy(image).pin_memory().cuda(non_blocking=True)
    same(want, stream.infer_device(DeviceFrame(frame, image.shape[1], image.shape[0], stream=producer)))
    with torch.cuda.stream(torch.cuda.default_stream()):  # the legacy default stream, named nowhere
        for _ in range(20):
            big = big @ big / 4096
        frame2 = torch.from_numpy(image).pin_memory().cuda(non_blocking=True)
    same(want, stream.infer_device(DeviceFrame(frame2.data_ptr(), image.shape[1], image.shape[0])))
    stream.close()


def test_two_cameras_at_once_on_one_model(model):
    """Two streams on one model in two threads (each camera its own CUDA streams and contexts): each camera's
    results equal its frames run alone."""
    a, b = model.open_stream(), model.open_stream()
    frames_a = [images()[0], images()[1]] * 4
    frames_b = [images()[2], images()[0]] * 4
    want_a = [a(f) for f in frames_a]
    want_b = [b(f) for f in frames_b]
    got: dict[str, list] = {}
    errors = []

    def run(name, stream, frames):
        try:
            got[name] = [r for _, r in stream.stream(frames)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=("a", a, frames_a)), threading.Thread(target=run, args=("b", b,
                                                                                                       frames_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for want, have in ((want_a, got["a"]), (want_b, got["b"])):
        for x, y in zip(want, have):
            same(x, y)
    a.close()
    b.close()


def test_rotating_device_buffers_and_an_early_exit(model):
    import torch

    from rtmw_edge.cuda.gpu_pipeline import DeviceFrame

    stream = model.open_stream()
    image = images()[1]
    want = stream(image)
    buffers = [torch.from_numpy(image).cuda() for _ in range(5)]
    torch.cuda.synchronize()
    for buf in buffers * 2:
        same(want, stream.infer_device(DeviceFrame(buf, image.shape[1], image.shape[0], stream=None)))
    frames = stream.stream([image] * 6)
    next(frames)
    frames.close()                                        # leaving early waits for the frames in flight
    same(want, stream(image))
    stream.close()

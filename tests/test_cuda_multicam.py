"""Many cameras, one pose call per tick, on the CUDA-stream pipeline (`cuda/multicam.GpuCameraBatch`) over the
emulated CUDA runtime (tests/emulated_cuda.py): every camera's persons equal the same frame run alone through
`GpuPoseEstimator`, the pose engine is called once per tick when the people fit its batch (⌈people / max batch⌉
otherwise), lanes and the pose side never race (the emulator's happens-before check), and the TensorRT stand-in's
rules hold (a context per stream, aligned chunks)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import SHARED
from emulated_cuda import Emulator, OrtDeviceEngine
from fake_tensorrt import make_fake_tensorrt

from rtmw_edge.backends import tensorrt as trt_backend
from rtmw_edge.cuda import gpu_pipeline as P
from rtmw_edge.cuda.multicam import GpuCameraBatch
from rtmw_edge.engines import GpuInfo

RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
ORIN = GpuInfo("Orin", "8.7")
NAMES = ("human-pose.jpg", "000000040083.jpg", "000000197388.jpg")   # 1, 2 and 5 (capped at 4) persons
pytestmark = [pytest.mark.skipif(not RAWHEAD.is_file(), reason="shared detector not found"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
pytest.importorskip("cuda.bindings.runtime")


def frames() -> list[np.ndarray]:
    return [cv2.imread(str(SHARED / "images" / n)) for n in NAMES] + [np.full((360, 480, 3), 90, np.uint8)]


def same(arrays, result) -> None:
    assert len(arrays.boxes) == len(result.persons)
    for i, p in enumerate(result.persons):
        np.testing.assert_array_equal(arrays.boxes[i], p.bbox)
        np.testing.assert_array_equal(arrays.keypoints[i], p.keypoints)
        np.testing.assert_array_equal(arrays.keypoint_scores[i], p.keypoint_scores)
    assert arrays.dropped == result.dropped_persons and (arrays.width, arrays.height) == (result.width, result.height)


@pytest.mark.parametrize("max_batch", [8, 2])
def test_four_cameras_one_pose_call_and_each_camera_as_alone(monkeypatch, random_export, max_batch):
    emu = Emulator(seed=11, policy="lazy").install(monkeypatch)
    pose_path = random_export("rtmpose-t-256x192")
    det = OrtDeviceEngine(emu, RAWHEAD, max_batch=1)
    pose = OrtDeviceEngine(emu, pose_path, max_batch=max_batch)
    model = P.GpuPoseModel(RAWHEAD, pose_path, det_engine=det, pose_engine=pose, max_persons=4)
    alone = model.open_stream()
    images = frames()
    want = [alone(im, i, 0.1 * i) for i, im in enumerate(images)]
    assert [len(w.persons) for w in want] == [1, 2, 4, 0]
    batch = GpuCameraBatch(model, cameras=4)
    pose.batches.clear()
    got = batch.tick({cam: (im, cam, 0.1 * cam) for cam, im in enumerate(images)})
    for cam in range(4):
        same(got[cam], want[cam])
        assert (got[cam].frame, got[cam].timestamp) == (cam, pytest.approx(0.1 * cam))
    assert batch.pose_batches == ([7] if max_batch == 8 else [2, 2, 2, 1])          # ⌈7 / max batch⌉ calls
    again = batch.tick({3: (images[1], 9, 0.9), 1: (images[0], 8, 0.8)})          # a subset, out of order
    same(again[3], want[1])
    same(again[1], want[0])
    assert batch.pose_batches == ([3] if max_batch == 8 else [2, 1]) and batch.pose_calls == len(pose.batches)
    assert len({c.stream for c in det.contexts}) == len(det.contexts) == 5          # 4 lanes + 1 slot alone
    batch.close()
    model.close()
    assert not any(emu.leaks().values()), emu.leaks()


def test_the_batch_on_the_tensorrt_stand_in_with_a_small_profile(monkeypatch, random_export, tmp_path):
    trt = make_fake_tensorrt("10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda device=0: ORIN)
    det = trt_backend.build_engine(RAWHEAD, tmp_path / "det.engine", gpu=ORIN, progress=False,
                                   timing_cache=False).engine_path
    pose = trt_backend.build_engine(random_export("rtmpose-t-256x192", decode=True), tmp_path / "pose.engine",
                                    batch="1:2:2", gpu=ORIN, progress=False, timing_cache=False).engine_path
    Emulator(seed=12, policy="eager").install(monkeypatch, trt=trt)
    model = P.GpuPoseModel(det, pose, backend="tensorrt", max_persons=4)
    alone = model.open_stream()
    images = frames()[:3]
    want = [alone(im) for im in images]
    batch = GpuCameraBatch(model, cameras=3)
    got = batch.tick({cam: (im, 0, 0.0) for cam, im in enumerate(images)})   # 7 persons: chunks of 2, decode graph
    for cam in range(3):
        same(got[cam], want[cam])
    assert batch.pose_batches == [2, 2, 2, 1]
    batch.close()
    model.close()


def test_bad_camera_numbers_are_one_line(monkeypatch, random_export):
    emu = Emulator(seed=1).install(monkeypatch)
    pose_path = random_export("rtmpose-t-256x192")
    model = P.GpuPoseModel(RAWHEAD, pose_path, det_engine=OrtDeviceEngine(emu, RAWHEAD, max_batch=1),
                           pose_engine=OrtDeviceEngine(emu, pose_path), max_persons=2)
    with pytest.raises(P.RtmwEdgeError, match="at least one camera"):
        GpuCameraBatch(model, cameras=0)
    batch = GpuCameraBatch(model, cameras=2)
    with pytest.raises(P.RtmwEdgeError, match=r"camera\(s\) \[5\] outside 0..1"):
        batch.tick({5: (frames()[0], 0, 0.0)})
    batch.close()
    model.close()


def test_the_streams_batch_finishes_each_camera_on_its_own_stream(monkeypatch, random_export):
    """`multicam.GpuStreamBatch` (what the daemon's worker runs on the GPU pipeline): over three ticks, each camera's
    results — tracked, so its own tracker's ids count — equal its own `GpuPoseStream` stepped alone; one pose call
    per tick; per-camera stage timings from the lanes' CUDA events; the streams' own frame slots never made."""
    from rtmw_edge.multicam import GpuStreamBatch, TickItem, open_camera_batch

    emu = Emulator(seed=13, policy="lazy").install(monkeypatch)
    pose_path = random_export("rtmpose-t-256x192")
    det = OrtDeviceEngine(emu, RAWHEAD, max_batch=1)
    pose = OrtDeviceEngine(emu, pose_path, max_batch=16)
    model = P.GpuPoseModel(RAWHEAD, pose_path, det_engine=det, pose_engine=pose, max_persons=4)
    images = frames()
    seq = [[images[(c + t) % 4] for t in range(3)] for c in range(3)]      # camera c, tick t
    alone = []
    for c in range(3):
        stream = model.open_stream(track=True)
        alone.append([stream(im, t, 0.1 * t) for t, im in enumerate(seq[c])])
        stream.close()
    streams = [model.open_stream(track=True, profile=True) for _ in range(3)]
    batch = open_camera_batch(SimpleNamespace(pipeline="cuda-stream", model=model))
    assert isinstance(batch, GpuStreamBatch)
    for t in range(3):
        report = batch.tick([TickItem(streams[c], seq[c][t], t, 0.1 * t) for c in range(3)])
        assert report.pose_calls == (1 if any(len(alone[c][t].persons) for c in range(3)) else 0)
        for c in range(3):
            got, want = report.outcomes[c].result, alone[c][t]
            assert [p.track_id for p in got.persons] == [p.track_id for p in want.persons]
            same(SimpleNamespace(boxes=[p.bbox for p in got.persons], keypoints=[p.keypoints for p in got.persons],
                                 keypoint_scores=[p.keypoint_scores for p in got.persons], dropped=got.dropped_persons,
                                 width=got.width, height=got.height), want)
    summary = streams[0].timings.summary()
    assert {"upload", "letterbox", "detector", "select", "pose_segment"} <= set(summary)
    assert all(v >= 0 for v in summary.values()) and summary["detector"] > 0
    assert all(not s.slots for s in streams)                          # the lanes did the work
    assert len({c.stream for c in det.contexts[-3:]}) == 3             # a detector context per lane
    batch.close()
    model.close()
    assert not any(emu.leaks().values()), emu.leaks()

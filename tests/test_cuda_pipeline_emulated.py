"""The GPU pipeline on the CPU, asynchronously: `GpuPoseEstimator` over the emulated CUDA runtime
(tests/emulated_cuda.py: deferred streams run in a seeded interleaving, poisoned pinned memory, a happens-before
check of every byte range), each kernel launch run by the host shim (the unchanged `.cu` sources) — or, as a
second check of the bookkeeping, by its numpy reference (`cuda/kernels.py`) — and the engines as deferred ONNX
Runtime work. Checks results equal to the CPU pipeline's on the shared photos within the tolerances of
docs/gpu-validation.md, under several seeds and the lazy policy, the two-slot `stream` order, chunking, edge
frames."""

from __future__ import annotations

import ctypes

import cv2
import numpy as np
import pytest
from conftest import SHARED
from emulated_cuda import Emulator, OrtDeviceEngine
from kernel_devices import pipelines_agree

from rtmw_edge import geometry as G
from rtmw_edge.cuda import gpu_pipeline as P
from rtmw_edge.cuda import kernels as KK
from rtmw_edge.pipeline import PoseEstimator, TopDownPose

RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
IMAGES = sorted((SHARED / "images").glob("*.jpg"))
pytestmark = [pytest.mark.skipif(not RAWHEAD.is_file() or not IMAGES, reason="shared detector/photos not found"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
pytest.importorskip("cuda.bindings.runtime")


def view(ptr: int, dtype, shape) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = (ctypes.c_uint8 * max(count * dtype.itemsize, 1)).from_address(int(ptr))
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class Twins:
    """Each kernel, when the emulated GPU runs it, as its numpy reference on the emulated memory."""

    def __call__(self, kernel: str, launch, values: dict) -> None:
        getattr(self, kernel)(values)

    @staticmethod
    def _frame(a):
        rows = view(a["src"], np.uint8, (a["src_h"], a["src_pitch"]))
        return np.ascontiguousarray(rows[:, : a["src_w"] * 3].reshape(a["src_h"], a["src_w"], 3))

    def letterbox_bgr_to_nchw(self, a):
        mean = (a["mean0"], a["mean1"], a["mean2"])
        std = (a["std0"], a["std1"], a["std2"])
        out = KK.reference_letterbox(self._frame(a), (a["dst_w"], a["dst_h"]), mean, std, bool(a["swap_rb"]),
                                     int(a["pad_value"]), bool(a["quantize"]))
        view(a["dst"], np.float32, out.shape)[...] = out

    def rtmdet_rawhead_decode(self, a):
        levels = [view(a[f"level{i}"], np.float32, (1, a[f"h{i}"], a[f"w{i}"], 5)) for i in range(3)]
        cls = [o[..., :1].transpose(0, 3, 1, 2) for o in levels]
        reg = [o[..., 1:].transpose(0, 3, 1, 2) for o in levels]
        boxes, scores = G.decode_rtmdet(cls, reg, tuple(a[f"stride{i}"] for i in range(3)))
        view(a["boxes"], np.float32, boxes[0].shape)[...] = boxes[0]
        view(a["scores"], np.float32, scores[0].shape)[...] = scores[0]

    def detector_select(self, a):
        k = a["num_candidates"]
        boxes, scores = view(a["boxes"], np.float32, (k, 4)), view(a["scores"], np.float32, (k,))
        # a Letterbox whose boxes_to_image / clip reproduce the kernel's scale and clip arguments
        sx, sy = float(a["scale_x"]), float(a["scale_y"])
        lb = G.Letterbox(sx, sy, int(round(a["clip_w"] * sx)), int(round(a["clip_h"] * sy)))
        assert round(lb.width / lb.scale_x) == a["clip_w"] and round(lb.height / lb.scale_y) == a["clip_h"]
        b, s, total = KK.reference_select(boxes, scores, lb, score_threshold=a["score_threshold"], iou1=a["iou1"],
                                          max_det1=a["max_det1"], run_nms1=bool(a["run_nms1"]), iou2=a["iou2"],
                                          max_persons=a["max_persons"])
        view(a["out_boxes"], np.float32, b.shape)[...] = b
        view(a["out_scores"], np.float32, s.shape)[...] = s
        view(a["header"], np.int32, (4,))[...] = (len(b), total, -1, -1)

    def crop_persons_bgr_to_nchw(self, a):
        n = a["num_persons"]
        boxes = view(a["boxes"], np.float32, (n, 4)).copy()
        mean = (a["mean0"], a["mean1"], a["mean2"])
        std = (a["std0"], a["std1"], a["std2"])
        crops, centers, scales = KK.reference_crops(self._frame(a), boxes, (a["dst_w"], a["dst_h"]), mean, std,
                                                    bool(a["swap_rb"]), a["padding"], bool(a["quantize"]))
        view(a["dst"], np.float32, crops.shape)[...] = crops
        view(a["params"], np.float32, (n, 4))[...] = KK.person_params(centers, scales)

    def simcc_decode_to_image(self, a):
        n, k = a["num_persons"], a["num_keypoints"]
        sx = view(a["simcc_x"], np.float32, (n, k, a["bins_x"]))
        sy = view(a["simcc_y"], np.float32, (n, k, a["bins_y"]))
        params = view(a["params"], np.float32, (n, 4))
        kp, sc = G.simcc_decode(sx, sy, a["split_ratio"])
        img = G.crop_to_image(kp, params[:, :2], params[:, 2:], (int(a["in_w"]), int(a["in_h"])))
        img[sc <= 0] = -1
        view(a["out"], np.float32, (n, k, 3))[...] = np.concatenate([img, sc[..., None]], -1)


@pytest.fixture(scope="module")
def pose_path(random_export):
    return random_export("rtmpose-t-256x192")


@pytest.fixture(scope="module")
def cpu(pose_path):
    return PoseEstimator(RAWHEAD, pose_path, max_persons=3)


@pytest.fixture
def emulated(monkeypatch, request):
    """The emulated runtime under rtmw_edge.cuda.runtime; param "eager-SEED", "lazy" or "twins" (numpy kernels)."""
    param = getattr(request, "param", "eager-0")
    policy, _, seed = param.partition("-")
    runner = Twins() if policy == "twins" else None
    return Emulator(seed=int(seed or 0), policy="eager" if policy == "twins" else policy,
                    kernel_runner=runner).install(monkeypatch)


@pytest.mark.parametrize("emulated", ["eager-0", "eager-1", "eager-2", "lazy"], indirect=True)
def test_emulated_gpu_pipeline_matches_the_cpu_pipeline(emulated, pose_path, cpu):
    pose = OrtDeviceEngine(emulated, pose_path, max_batch=2)        # forces chunking: 2 persons per engine call
    det = OrtDeviceEngine(emulated, RAWHEAD, max_batch=1)
    est = P.GpuPoseEstimator(RAWHEAD, pose_path, det_engine=det, pose_engine=pose, max_persons=3,
                             match_cpu_rounding=True)
    assert est.det.kind == "rtmdet-rawhead" and [s for _, s in est.det.levels] == [8, 16, 32]
    assert est.num_candidates == 2100 and est.capacity == 3 and est.model.chunk == 2
    names = ("000000197388.jpg", "000000040083.jpg", "human-pose.jpg")   # 5 persons (capped at 3), 1-2, 1
    images = [cv2.imread(str(SHARED / "images" / n)) for n in names]
    streamed = list(est.stream([(im, i, 0.1 * i) for i, im in enumerate(images)]))
    assert [r.frame for _, r in streamed] == list(range(len(images)))          # in order
    crowded, pairs = 0, []
    for image, (_, from_stream) in zip(images, streamed):
        want, got = cpu(image), est(image)
        assert (got.width, got.height) == (want.width, want.height)
        assert len(got.persons) == len(want.persons) == len(from_stream.persons)
        assert got.dropped_persons == want.dropped_persons
        crowded += got.dropped_persons > 0
        for p, q, r in zip(want.persons, got.persons, from_stream.persons):
            assert q.score == pytest.approx(p.score, abs=5e-3)
            np.testing.assert_array_equal(q.keypoints, r.keypoints)
            assert q.keypoints.dtype == np.float32 and q.keypoint_scores.shape == (17,)
            pairs.append((p, q))
    pipelines_agree(pairs)                                   # boxes ≤ 0.5 px, keypoints: medians ≤ 0.5 px
    assert crowded >= 1                                      # the cap is hit on the crowded photo
    assert max(pose.batches) == 2 and 1 in pose.batches      # 3 persons → engine calls of 2 + 1
    kernels = [k for k, _ in emulated.launched]
    assert kernels.count("crop_persons_bgr_to_nchw") > kernels.count("letterbox_bgr_to_nchw")   # one per chunk
    est.close()
    assert not any(emulated.leaks().values()), emulated.leaks()    # every buffer, stream, event freed


@pytest.mark.parametrize("emulated", ["eager-0", "twins"], indirect=True)
def test_emulated_detect_and_flip_rules(emulated, pose_path):
    pose = OrtDeviceEngine(emulated, pose_path, max_batch=8)
    det = OrtDeviceEngine(emulated, RAWHEAD, max_batch=1)
    est = P.GpuPoseEstimator(RAWHEAD, pose_path, det_engine=det, pose_engine=pose)
    cpu = PoseEstimator(RAWHEAD, pose_path)
    image = cv2.imread(str(IMAGES[0]))
    boxes, scores, dropped = est.detect(image)
    want = cpu.detect(image)
    assert len(boxes) == len(want[0]) and dropped == want[2]
    np.testing.assert_allclose(boxes, want[0], atol=0.5)
    with pytest.raises(P.RtmwEdgeError, match="--flip-test"):
        P.GpuPoseEstimator(RAWHEAD, pose_path, det_engine=det, pose_engine=pose, flip_test=True)
    assert isinstance(TopDownPose, type)
    est.close()


def test_emulated_pipeline_on_edge_frames(emulated, pose_path):
    """A blank frame (0 persons), a 1×1 frame and a 4K frame through both pipelines: the same persons, no NaN."""
    pose = OrtDeviceEngine(emulated, pose_path, max_batch=8)
    det = OrtDeviceEngine(emulated, RAWHEAD, max_batch=1)
    est = P.GpuPoseEstimator(RAWHEAD, pose_path, det_engine=det, pose_engine=pose, match_cpu_rounding=True)
    cpu = PoseEstimator(RAWHEAD, pose_path)
    photo = cv2.imread(str(SHARED / "images" / "human-pose.jpg"))
    frames = {"blank": np.full((480, 640, 3), 128, np.uint8), "1x1": photo[:1, :1].copy(),
              "4K": cv2.resize(photo, (3840, 2160), interpolation=cv2.INTER_LINEAR)}
    for name, frame in frames.items():
        want, got = cpu(frame), est(frame)
        assert (got.width, got.height) == (frame.shape[1], frame.shape[0]), name
        assert len(got.persons) == len(want.persons), name
        for p in got.persons:
            assert np.isfinite(p.bbox).all() and np.isfinite(p.keypoints).all() and np.isfinite(p.keypoint_scores).all()
        if got.persons:
            lb = G.letterbox_params(frame.shape[:2], est.det.input_size)
            pipelines_agree(list(zip(want.persons, got.persons)), input_px=1 / lb.scale_x)
    assert len(est(frames["blank"]).persons) == 0 and len(est(frames["4K"]).persons) >= 1
    est.close()

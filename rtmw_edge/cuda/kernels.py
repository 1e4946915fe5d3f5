"""The CUDA kernels seen from Python: signatures, launch configurations, argument packing, buffer sizes,
and the float64 sampling references the kernels are tested against. Pure Python + numpy (CPU-testable).

Kernels (rtmw_edge/kernels/*.cu) and their numpy twins in `geometry.py`:

=========================  ==============  ===================================================  ================
kernel                     file            twin                                                 launch
=========================  ==============  ===================================================  ================
letterbox_bgr_to_nchw      letterbox.cu    letterbox + normalize_to_nchw                        (32,8) 2-D grid
rtmdet_rawhead_decode      detector_post   decode_rtmdet                                        256, 1 per prior
detector_select            detector_post   filter_detections, boxes_to_image + clip, nms        1 block ≤ 512
crop_persons_bgr_to_nchw   crops.cu        crop_persons (box_to_center_scale, warp_matrix)      (32,8) × persons
simcc_decode_to_image      decode.cu       simcc_decode(_z), crop_to_image, depth_to_camera     1 warp/keypoint
decoded_to_image           decode.cu       crop_to_image, depth_to_camera (--decode graphs)     1 thread/keypoint
=========================  ==============  ===================================================  ================

The sampling kernels use float weights and keep the value in float; OpenCV quantises positions and weights
(fixed point) and rounds to uint8. `reference_letterbox` / `reference_crops` are the exact float64 model of
what the kernels compute; the tests compare the kernels with them (1e-3 after normalisation) and the
references with OpenCV (the fixed-point difference, measured and reported).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from .. import geometry as G
from ..errors import RtmwEdgeError

# --------------------------------------------------------------------------- signatures
# type codes: p = device pointer (64-bit), i = int32, f = float32, d = float64
SIGNATURES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "letterbox_bgr_to_nchw": ("letterbox.cu", (
        ("src", "p"), ("src_w", "i"), ("src_h", "i"), ("src_pitch", "i"),
        ("dst", "p"), ("dst_w", "i"), ("dst_h", "i"), ("new_w", "i"), ("new_h", "i"),
        ("scale_x", "f"), ("scale_y", "f"),
        ("mean0", "f"), ("mean1", "f"), ("mean2", "f"), ("std0", "f"), ("std1", "f"), ("std2", "f"),
        ("swap_rb", "i"), ("pad_value", "f"), ("quantize", "i"))),
    "rtmdet_rawhead_decode": ("detector_post.cu", (
        ("level0", "p"), ("h0", "i"), ("w0", "i"), ("stride0", "i"),
        ("level1", "p"), ("h1", "i"), ("w1", "i"), ("stride1", "i"),
        ("level2", "p"), ("h2", "i"), ("w2", "i"), ("stride2", "i"),
        ("boxes", "p"), ("scores", "p"))),
    "detector_select": ("detector_post.cu", (
        ("boxes", "p"), ("scores", "p"), ("num_candidates", "i"),
        ("score_threshold", "f"), ("run_nms1", "i"), ("iou1", "d"), ("max_det1", "i"),
        ("scale_x", "f"), ("scale_y", "f"), ("clip_w", "f"), ("clip_h", "f"),
        ("iou2", "d"), ("max_persons", "i"),
        ("work", "p"), ("out_boxes", "p"), ("out_scores", "p"), ("header", "p"))),
    "crop_persons_bgr_to_nchw": ("crops.cu", (
        ("src", "p"), ("src_w", "i"), ("src_h", "i"), ("src_pitch", "i"),
        ("boxes", "p"), ("num_persons", "i"),
        ("dst", "p"), ("dst_w", "i"), ("dst_h", "i"), ("params", "p"),
        ("padding", "f"), ("aspect", "f"),
        ("mean0", "f"), ("mean1", "f"), ("mean2", "f"), ("std0", "f"), ("std1", "f"), ("std2", "f"),
        ("swap_rb", "i"), ("quantize", "i"))),
    "simcc_decode_to_image": ("decode.cu", (
        ("simcc_x", "p"), ("bins_x", "i"), ("simcc_y", "p"), ("bins_y", "i"), ("simcc_z", "p"), ("bins_z", "i"),
        ("params", "p"), ("num_persons", "i"), ("num_keypoints", "i"),
        ("split_ratio", "f"), ("in_w", "f"), ("in_h", "f"),
        ("out", "p"), ("out3d", "p"),
        ("depth_half", "f"), ("z_range", "f"), ("root_z", "f"), ("fx", "f"), ("fy", "f"), ("cx", "f"), ("cy", "f"))),
    "decoded_to_image": ("decode.cu", (
        ("keypoints", "p"), ("scores", "p"), ("z", "p"), ("params", "p"),
        ("num_persons", "i"), ("num_keypoints", "i"), ("in_w", "f"), ("in_h", "f"),
        ("out", "p"), ("out3d", "p"),
        ("depth_half", "f"), ("z_range", "f"), ("root_z", "f"), ("fx", "f"), ("fy", "f"), ("cx", "f"), ("cy", "f"))),
}

_CTYPES = {"p": ctypes.c_uint64, "i": ctypes.c_int32, "f": ctypes.c_float, "d": ctypes.c_double}
_LIMITS_I32 = (-(2 ** 31), 2 ** 31 - 1)


class KernelArgs:
    """Kernel arguments packed for cuLaunchKernel: `address` is the `void**` kernelParams array.

    Keeps the ctypes values alive as long as the object lives (the launch reads them synchronously).
    """

    def __init__(self, kernel: str, values: dict[str, object]) -> None:
        if kernel not in SIGNATURES:
            raise RtmwEdgeError(f"unknown kernel {kernel!r}")
        params = SIGNATURES[kernel][1]
        names = [n for n, _ in params]
        missing = [n for n in names if n not in values]
        extra = [n for n in values if n not in names]
        if missing or extra:
            raise RtmwEdgeError(f"{kernel}: missing arguments {missing}, unexpected {extra}")
        self.kernel = kernel
        self.values = []
        for name, code in params:
            value = values[name]
            if code == "p":
                value = 0 if value is None else int(value)
                if value < 0 or value >= 2 ** 64:
                    raise RtmwEdgeError(f"{kernel}.{name}: not a device pointer: {value}")
            elif code == "i":
                value = int(value)
                if not _LIMITS_I32[0] <= value <= _LIMITS_I32[1]:
                    raise RtmwEdgeError(f"{kernel}.{name}: {value} does not fit int32")
            else:
                value = float(value)
            self.values.append(_CTYPES[code](value))
        self.array = (ctypes.c_void_p * len(self.values))(*(ctypes.addressof(v) for v in self.values))

    @property
    def address(self) -> int:
        return ctypes.addressof(self.array)

    def read_back(self) -> list:
        """The values as the kernel will see them (tests)."""
        return [v.value for v in self.values]


def pack_args(kernel: str, **values) -> KernelArgs:
    return KernelArgs(kernel, values)


# --------------------------------------------------------------------------- launch configurations
@dataclass(frozen=True)
class Launch:
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int = 0

    @property
    def threads(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2] * self.block[0] * self.block[1] * self.block[2]


TILE = (32, 8)              # 2-D image kernels
LINEAR_BLOCK = 256
WARPS_PER_BLOCK = LINEAR_BLOCK // 32
MAX_SELECT_BLOCK = 512
MAX_GRID_Y_Z = 65535


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def image_launch(width: int, height: int, depth: int = 1) -> Launch:
    """One thread per output pixel, (32, 8) tiles, z = image index (persons for the crop kernel)."""
    if width < 1 or height < 1 or depth < 1:
        raise RtmwEdgeError(f"empty launch: {width}x{height}x{depth}")
    gy, gz = _ceil(height, TILE[1]), depth
    if gy > MAX_GRID_Y_Z or gz > MAX_GRID_Y_Z:
        raise RtmwEdgeError(f"launch too large: grid y {gy}, z {gz} (max {MAX_GRID_Y_Z})")
    return Launch((_ceil(width, TILE[0]), gy, gz), (TILE[0], TILE[1], 1))


def letterbox_launch(input_wh: tuple[int, int]) -> Launch:
    return image_launch(input_wh[0], input_wh[1])


def crop_launch(input_wh: tuple[int, int], persons: int) -> Launch:
    return image_launch(input_wh[0], input_wh[1], persons)


def rawhead_launch(num_priors: int) -> Launch:
    return Launch((_ceil(num_priors, LINEAR_BLOCK), 1, 1), (LINEAR_BLOCK, 1, 1))


def select_launch(num_candidates: int) -> Launch:
    """One block: a multiple of 32 threads, at least 64, at most 512 (fewer for small candidate counts)."""
    threads = min(MAX_SELECT_BLOCK, max(64, _ceil(max(num_candidates, 1), 32) * 32))
    return Launch((1, 1, 1), (threads, 1, 1))


def simcc_decode_launch(persons: int, keypoints: int) -> Launch:
    """One warp per (person, keypoint)."""
    return Launch((_ceil(max(persons * keypoints, 1), WARPS_PER_BLOCK), 1, 1), (LINEAR_BLOCK, 1, 1))


def decoded_launch(persons: int, keypoints: int) -> Launch:
    return Launch((_ceil(max(persons * keypoints, 1), LINEAR_BLOCK), 1, 1), (LINEAR_BLOCK, 1, 1))


# --------------------------------------------------------------------------- buffer sizes
ALIGN = 256  # cudaMalloc alignment; sub-buffers of one slot start on this boundary


def align(nbytes: int, to: int = ALIGN) -> int:
    return _ceil(nbytes, to) * to


def nms_scratch_bytes(num_candidates: int) -> int:
    """detector_select's `work`: 4 int32 lists, 2 box lists (4 float32), sorted scores, flags (uint8)."""
    k = int(num_candidates)
    return 4 * 4 * k + 2 * 16 * k + 4 * k + k


def batch_chunks(n: int, max_batch: int | None, min_batch: int = 1) -> list[tuple[int, int, int]]:
    """Split `n` persons into engine calls: (start, persons, batch) with min_batch ≤ batch ≤ max_batch.

    A chunk smaller than the engine's minimum batch runs at the minimum (the extra items are ignored).
    """
    if n <= 0:
        return []
    step = max_batch or n
    if step < 1 or min_batch < 1 or min_batch > step:
        raise RtmwEdgeError(f"bad engine batch range [{min_batch}, {max_batch}]")
    return [(s, min(step, n - s), max(min(step, n - s), min_batch)) for s in range(0, n, step)]


def pose_capacity(max_persons: int, max_batch: int | None, min_batch: int = 1) -> int:
    """Items the pose buffers must hold so that every chunking of n ≤ max_persons stays inside."""
    if max_persons < 1:
        raise RtmwEdgeError("max_persons must be at least 1")
    return max(max(s + b for s, _, b in batch_chunks(n, max_batch, min_batch))
               for n in range(1, max_persons + 1))


def max_person_count(max_persons: int, num_candidates: int) -> int:
    """The detector can never return more persons than it has candidate boxes."""
    return max(1, min(int(max_persons), int(num_candidates)))


@dataclass(frozen=True)
class SlotPlan:
    """Byte sizes of one frame slot's device buffers (frame buffer excluded: it grows with the frame)."""

    sizes: dict[str, int]

    @property
    def total(self) -> int:
        return sum(align(v) for v in self.sizes.values())

    def offsets(self) -> dict[str, int]:
        out, pos = {}, 0
        for name, size in self.sizes.items():
            out[name] = pos
            pos += align(size)
        return out


def plan_slot(*, det_input_shape: tuple[int, ...], det_outputs: dict[str, tuple[tuple[int, ...], str]],
              num_candidates: int, max_persons: int, pose_input_wh: tuple[int, int],
              pose_outputs: dict[str, tuple[tuple[int, ...], str]], num_keypoints: int, capacity: int,
              has_3d: bool, pose_chunk: int | None = None) -> SlotPlan:
    """Device bytes per slot. det_outputs: name → (shape for batch 1, numpy dtype name); pose_outputs: the same
    for one engine call of `pose_chunk` items (default: all `capacity` in one call).

    The pose input and outputs are laid out chunk by chunk, each chunk starting on a 256-byte boundary
    (`chunk_stride`), because TensorRT requires 256-byte aligned tensor addresses: item k of a chunk at
    `start · item_bytes` would not be. Every dimension must be known and positive (an engine with data-dependent
    output shapes cannot be planned)."""
    def nbytes(shape, dtype="float32") -> int:
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

    for name, (shape, _) in {**det_outputs, **pose_outputs}.items():
        if not shape or any(int(d) <= 0 for d in shape):
            raise RtmwEdgeError(f"engine output {name} has shape {list(shape)}: the GPU pipeline needs fixed, known "
                                "output shapes (no dynamic or data-dependent dims)")
    step = int(pose_chunk or capacity)
    chunks = _ceil(capacity, step)
    sizes = {"det_input": nbytes(det_input_shape)}
    for name, (shape, dtype) in det_outputs.items():
        sizes[f"det:{name}"] = nbytes(shape, dtype)
    sizes.update({
        "cand_boxes": nbytes((num_candidates, 4)), "cand_scores": nbytes((num_candidates,)),
        "nms_work": nms_scratch_bytes(num_candidates),
        "boxes": nbytes((max_persons, 4)), "scores": nbytes((max_persons,)), "header": nbytes((4,), "int32"),
        "params": nbytes((capacity, 4)),
        "pose_input": chunks * chunk_stride(nbytes((step, 3, pose_input_wh[1], pose_input_wh[0]))),
    })
    for name, (shape, dtype) in pose_outputs.items():
        sizes[f"pose:{name}"] = chunks * chunk_stride(nbytes(shape, dtype))
    sizes["keypoints"] = nbytes((capacity, num_keypoints, 3))
    if has_3d:
        sizes["keypoints_3d"] = nbytes((capacity, num_keypoints, 3))
    return SlotPlan(sizes)


def chunk_stride(chunk_bytes: int) -> int:
    """Bytes from one pose chunk's buffer to the next: the chunk's size rounded up to 256."""
    return align(int(chunk_bytes))


# --------------------------------------------------------------------------- host-side parameters
def letterbox_args(image_hw: tuple[int, int], input_wh: tuple[int, int]) -> dict:
    """The geometry the letterbox and select kernels get for one frame (from geometry.letterbox_params)."""
    lb = G.letterbox_params(image_hw, input_wh)
    h, w = image_hw
    image_w, image_h = lb.width / lb.scale_x, lb.height / lb.scale_y
    return {"letterbox": lb, "new_w": lb.width, "new_h": lb.height,
            # cv2.resize: scale = 1 / (dst / src), computed that way (it can differ from src / dst in the last bit)
            "resize_scale_x": 1.0 / (lb.width / w), "resize_scale_y": 1.0 / (lb.height / h),
            "box_scale_x": np.float32(lb.scale_x), "box_scale_y": np.float32(lb.scale_y),
            "clip_w": float(round(image_w)), "clip_h": float(round(image_h))}


def normalisation(mean, std) -> dict:
    m = [float(np.float32(v)) for v in mean]
    s = [float(np.float32(v)) for v in std]
    if len(m) != 3 or len(s) != 3 or any(v == 0 for v in s):
        raise RtmwEdgeError(f"mean/std must be 3 values with std != 0, got {mean}, {std}")
    return {"mean0": m[0], "mean1": m[1], "mean2": m[2], "std0": s[0], "std1": s[1], "std2": s[2]}


# --------------------------------------------------------------------------- float64 sampling references
def _axis_taps_resize(dst: int, src: int, scale: float):
    # the letterbox kernel's float32 position: (x + 0.5) * scale - 0.5, each operation rounded (no FMA)
    f = (np.arange(dst, dtype=np.float32) + np.float32(0.5)) * np.float32(scale) - np.float32(0.5)
    i = np.floor(f).astype(np.int64)
    a = (f - i.astype(np.float32)).astype(np.float64)
    low = i < 0
    i[low], a[low] = 0, 0.0
    high = i >= src - 1
    i[high], a[high] = src - 1, 0.0
    return i, np.minimum(i + 1, src - 1), a


def reference_resize(image: np.ndarray, new_wh: tuple[int, int]) -> np.ndarray:
    """float64 H×W×C bilinear resize with cv2.resize INTER_LINEAR's sampling (half-pixel centres, edge
    clamp; the position in float32 as the kernel computes it), unquantised weights and no rounding: what
    letterbox_bgr_to_nchw computes."""
    h, w = image.shape[:2]
    x0, x1, ax = _axis_taps_resize(new_wh[0], w, 1.0 / (new_wh[0] / w))
    y0, y1, ay = _axis_taps_resize(new_wh[1], h, 1.0 / (new_wh[1] / h))
    src = image.astype(np.float64)
    top = (1 - ax)[None, :, None] * src[y0][:, x0] + ax[None, :, None] * src[y0][:, x1]
    bottom = (1 - ax)[None, :, None] * src[y1][:, x0] + ax[None, :, None] * src[y1][:, x1]
    return (1 - ay)[:, None, None] * top + ay[:, None, None] * bottom


def reference_letterbox(image: np.ndarray, input_wh: tuple[int, int], mean, std, swap_rb: bool = False,
                        pad_value: int = 114, quantize: bool = False) -> np.ndarray:
    """float64 [1,3,H,W]: the letterbox kernel's output (twin of letterbox + normalize_to_nchw)."""
    lb = G.letterbox_params(image.shape[:2], input_wh)
    canvas = np.full((input_wh[1], input_wh[0], 3), float(pad_value))
    resized = reference_resize(image, (lb.width, lb.height))
    canvas[: lb.height, : lb.width] = np.rint(resized) if quantize else resized
    return _normalise(canvas[None], mean, std, swap_rb)


def _normalise(batch: np.ndarray, mean, std, swap_rb: bool) -> np.ndarray:
    x = batch[..., ::-1] if swap_rb else batch
    x = (x - np.asarray(mean, np.float32).astype(np.float64)) / np.asarray(std, np.float32).astype(np.float64)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def inverse_warp(center: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int]) -> np.ndarray:
    """The dst → src affine of one crop, inverted as cv2.warpAffine does (the crop kernel's arithmetic)."""
    m = G.warp_matrix(center, scale, input_wh)
    d = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    d = 1.0 / d if d != 0 else 0.0
    a11, a22, a12, a21 = m[1, 1] * d, m[0, 0] * d, -m[0, 1] * d, -m[1, 0] * d
    return np.array([[a11, a12, -a11 * m[0, 2] - a12 * m[1, 2]],
                     [a21, a22, -a21 * m[0, 2] - a22 * m[1, 2]]])


def reference_warp(image: np.ndarray, inverse: np.ndarray, dst_wh: tuple[int, int]) -> np.ndarray:
    """float64 H×W×C: output (x, y) samples the image at inverse·(x, y, 1) bilinearly, taps outside → 0
    (cv2.warpAffine INTER_LINEAR + BORDER_CONSTANT 0, without its 1/32-pixel position quantisation). The
    position is computed as the crop kernel computes it: the inverse rounded to float32, x·a + b in float32."""
    h, w = image.shape[:2]
    ys, xs = np.meshgrid(np.arange(dst_wh[1], dtype=np.float32), np.arange(dst_wh[0], dtype=np.float32),
                         indexing="ij")
    a = np.asarray(inverse, np.float64).astype(np.float32)   # the kernel keeps the float64 inverse as float32
    if a[0, 1] != 0 or a[1, 0] != 0:
        raise RtmwEdgeError("reference_warp models the crop kernel: scale + translation only")
    fx = a[0, 0] * xs + a[0, 2]                               # float32, each operation rounded (no FMA)
    fy = a[1, 1] * ys + a[1, 2]
    x0, y0 = np.floor(fx), np.floor(fy)
    ax = (fx - x0).astype(np.float64)[..., None]
    ay = (fy - y0).astype(np.float64)[..., None]
    x0 = np.clip(x0, -2, w + 1).astype(np.int64)
    y0 = np.clip(y0, -2, h + 1).astype(np.int64)
    src = image.astype(np.float64)

    def tap(x, y):
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        return np.where(inside[..., None], src[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], 0.0)

    top = (1 - ax) * tap(x0, y0) + ax * tap(x0 + 1, y0)
    bottom = (1 - ax) * tap(x0, y0 + 1) + ax * tap(x0 + 1, y0 + 1)
    return (1 - ay) * top + ay * bottom


def reference_crops(image: np.ndarray, boxes: np.ndarray, input_wh: tuple[int, int], mean, std,
                    swap_rb: bool = True, padding: float = G.BBOX_PADDING, quantize: bool = False):
    """float64 [N,3,H,W] crops, centres, scales: the crop kernel's output (twin of geometry.crop_persons)."""
    centers, scales = G.box_to_center_scale(boxes, input_wh, padding)
    crops = np.zeros((len(centers), input_wh[1], input_wh[0], 3))
    for i, (c, s) in enumerate(zip(centers, scales)):
        if s[0] != 0:  # degenerate boxes (geometry.valid_boxes) keep the empty crop
            crops[i] = reference_warp(image, inverse_warp(c, s, input_wh), input_wh)
    if quantize:
        crops = np.rint(crops)
    return _normalise(crops, mean, std, swap_rb), centers, scales


def person_params(centers: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[N,4] (cx, cy, scale_w, scale_h) float32: what the crop kernel writes for the decode kernel."""
    return np.concatenate([np.asarray(centers, np.float32).reshape(-1, 2),
                           np.asarray(scales, np.float32).reshape(-1, 2)], axis=1)


def reference_select(boxes: np.ndarray, scores: np.ndarray, letterbox: G.Letterbox, *,
                     score_threshold: float, iou1: float = 0.6, max_det1: int = 1000, run_nms1: bool = True,
                     iou2: float = 0.3, max_persons: int = 32) -> tuple[np.ndarray, np.ndarray, int]:
    """What detector_select computes, composed from the CPU pipeline's own functions in the kernel's order:
    threshold + NMS (filter_detections, or threshold + stable sort for graphs that ran NMS) → input pixels
    to image pixels + clip (OnnxDetector.postprocess) → person NMS (PoseEstimator.detect) → first
    max_persons. Returns (boxes [n,4], scores [n], total before the cap)."""
    boxes, scores = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1)
    if run_nms1:
        boxes, scores = G.filter_detections(boxes, scores, score_threshold, iou1, max_det1)
    else:
        keep = np.flatnonzero((scores > score_threshold) & G.valid_boxes(boxes))
        keep = keep[np.argsort(-scores[keep], kind="stable")][:max_det1]
        boxes, scores = boxes[keep], scores[keep]
    boxes = letterbox.boxes_to_image(boxes)
    image_w, image_h = letterbox.width / letterbox.scale_x, letterbox.height / letterbox.scale_y
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, round(image_w))
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, round(image_h))
    inside = G.valid_boxes(boxes)
    boxes, scores = boxes[inside], scores[inside]
    keep = G.nms(boxes, scores, iou2)
    boxes, scores = boxes[keep], scores[keep]
    return boxes[:max_persons].astype(np.float32), scores[:max_persons].astype(np.float32), len(boxes)

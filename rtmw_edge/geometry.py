"""Every formula of the pipeline, in numpy: letterbox, box decoding, NMS, box → crop, SimCC → image.

One place for each formula: the CPU pipeline calls these, the exported ONNX decode and the CUDA kernels
are tested against them, and the tests check them against hand-computed cases and OpenCV.
References: rtmw_facts.md §3.1 (top-down affine), §3.4/§3.6/§3.7 (SimCC decode and back-mapping),
§3.8 (RTMDet letterbox and box decoding).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BBOX_PADDING = 1.25  # GetBBoxCenterScale default
MAX_BOX_SIZE = 1e6   # px: no frame is this wide; past ~1.6e6 OpenCV's 32-bit fixed-point warpAffine overflows
SCORE_LIMIT = float(np.finfo(np.float32).max)  # keypoint scores are clipped to ±this (finite, JSON-safe)


# --------------------------------------------------------------------------- detector input / output
@dataclass(frozen=True)
class Letterbox:
    """How a frame was put into the detector input: resized by (sx, sy), padded bottom/right."""

    scale_x: float
    scale_y: float
    width: int       # resized content size inside the input
    height: int

    def boxes_to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Detector-input pixels → original-image pixels (mmdet divides by the per-axis scale factor)."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[..., 0::2] /= self.scale_x
        out[..., 1::2] /= self.scale_y
        return out


def letterbox_params(image_hw: tuple[int, int], input_wh: tuple[int, int]) -> Letterbox:
    """mmdet `Resize(keep_ratio=True)`: fit the longer side, sizes rounded half-up, per-axis factors."""
    h, w = image_hw
    in_w, in_h = input_wh
    factor = min(in_w / w, in_h / h)
    new_w, new_h = max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))  # ≥ 1 px for extreme aspects
    return Letterbox(new_w / w, new_h / h, new_w, new_h)


def letterbox(image: np.ndarray, input_wh: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, Letterbox]:
    """uint8 HWC image → uint8 input_h×input_w×C canvas (bilinear resize, padded bottom/right)."""
    lb = letterbox_params(image.shape[:2], input_wh)
    resized = cv2.resize(image, (lb.width, lb.height), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((input_wh[1], input_wh[0], image.shape[2]), pad_value, dtype=np.uint8)
    canvas[: lb.height, : lb.width] = resized
    return canvas, lb


def normalize_to_nchw(images: np.ndarray, mean, std, swap_rb: bool) -> np.ndarray:
    """uint8/float N×H×W×3 (or H×W×3) BGR → float32 N×3×H×W, optionally BGR→RGB, then (x − mean)/std."""
    batch = images[None] if images.ndim == 3 else images
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    out = np.empty((batch.shape[0], 3, *batch.shape[1:3]), np.float32)
    for c in range(3):  # one plane at a time, straight into the NCHW buffer (no HWC float temporaries)
        plane = out[:, c]
        np.subtract(batch[..., 2 - c if swap_rb else c], mean[c], out=plane, dtype=np.float32)
        np.divide(plane, std[c], out=plane)
    return out


def grid_priors(input_hw: tuple[int, int], strides: tuple[int, ...]) -> np.ndarray:
    """Anchor points of every level, [N, 2] as (x, y) = (col·stride, row·stride) — offset 0, row-major."""
    points = []
    for s in strides:
        h, w = -(-input_hw[0] // s), -(-input_hw[1] // s)  # ceil, as the feature maps of odd sizes
        ys, xs = np.meshgrid(np.arange(h, dtype=np.float32) * s, np.arange(w, dtype=np.float32) * s, indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
    return np.concatenate(points, axis=0)


def distance2bbox(points: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """(x, y) and (l, t, r, b) → (x − l, y − t, x + r, y + b)."""
    return np.concatenate([points - distances[..., :2], points + distances[..., 2:]], axis=-1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_rtmdet(cls_scores: list[np.ndarray], bbox_preds: list[np.ndarray],
                  strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Raw RTMDet head outputs (lists over levels of B×1×H×W logits and B×4×H×W distances × stride)
    → boxes [B, N, 4] in input pixels and scores [B, N] (sigmoid), levels concatenated in stride order."""
    hw = (cls_scores[0].shape[2] * strides[0], cls_scores[0].shape[3] * strides[0])
    points = grid_priors(hw, strides)
    scores = np.concatenate([c.reshape(c.shape[0], -1) for c in cls_scores], axis=1)
    dists = np.concatenate([b.reshape(b.shape[0], 4, -1).transpose(0, 2, 1) for b in bbox_preds], axis=1)
    return distance2bbox(points[None], dists).astype(np.float32), sigmoid(scores).astype(np.float32)


def valid_boxes(boxes: np.ndarray) -> np.ndarray:
    """The one rule for degenerate boxes (CPU pipeline, `detector_post.cu`, `crops.cu`, tests): a box is usable
    iff 0 < x2 − x1 ≤ MAX_BOX_SIZE and 0 < y2 − y1 ≤ MAX_BOX_SIZE, computed in float32.

    False for zero-area and inverted boxes and for any box with a NaN or infinite coordinate (NaN fails every
    comparison; inf − finite = inf; inf − inf = NaN). Selection (`filter_detections`, the detectors'
    post-processing, the select kernel) drops such boxes; `box_to_center_scale` gives them the empty crop.
    """
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    with np.errstate(invalid="ignore", over="ignore"):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return (w > 0) & (w <= MAX_BOX_SIZE) & (h > 0) & (h <= MAX_BOX_SIZE)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, [Na, Nb]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_det: int | None = None) -> np.ndarray:
    """Greedy NMS: indices of kept boxes, highest score first (ties: lower index first)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    iou = box_iou(boxes, boxes) if len(order) else np.zeros((0, 0))
    for idx in order:
        if suppressed[idx]:
            continue
        keep.append(int(idx))
        if max_det is not None and len(keep) >= max_det:
            break
        suppressed |= iou[idx] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def filter_detections(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float,
                      max_det: int) -> tuple[np.ndarray, np.ndarray]:
    """Threshold (degenerate boxes dropped, `valid_boxes`), then NMS, then keep at most `max_det` (one image:
    boxes [N,4], scores [N])."""
    mask = (scores > score_threshold) & valid_boxes(boxes)
    boxes, scores = boxes[mask], scores[mask]
    keep = nms(boxes, scores, iou_threshold, max_det)
    return boxes[keep], scores[keep]


# --------------------------------------------------------------------------- top-down crops
def box_to_center_scale(boxes: np.ndarray, input_wh: tuple[int, int],
                        padding: float = BBOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """xyxy boxes [N,4] → centres [N,2] and padded, aspect-fixed scales [N,2] (w, h) in image pixels.

    The box grows by `padding`, then only ever grows further to the input aspect ratio w/h. A box that fails
    `valid_boxes` has no crop: its centre and scale are 0 (`crop_persons` gives it the empty crop, all border,
    and `crop_to_image` puts its keypoints at (0, 0)) — never a division by zero or a NaN.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    with np.errstate(invalid="ignore", over="ignore"):
        center = (boxes[:, :2] + boxes[:, 2:]) * 0.5
        scale = (boxes[:, 2:] - boxes[:, :2]) * padding
        aspect = input_wh[0] / input_wh[1]
        sw, sh = scale[:, 0], scale[:, 1]
        wider = sw > sh * aspect
        scale = np.stack([np.where(wider, sw, sh * aspect), np.where(wider, sw / aspect, sh)], axis=1)
    bad = ~valid_boxes(boxes)
    center[bad], scale[bad] = 0.0, 0.0
    return center, scale.astype(np.float32)


def warp_matrix(center: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int]) -> np.ndarray:
    """2×3 affine that maps the box (centre, scale) onto the input crop: x' = s·x + (w/2 − s·cx).

    With rotation 0 and an aspect-fixed scale, mmpose's 3-point construction reduces to this;
    s = w_in / scale_w (= h_in / scale_h). float64, as cv2.getAffineTransform returns.
    """
    s = input_wh[0] / float(scale[0])
    return np.array([[s, 0.0, input_wh[0] / 2 - s * float(center[0])],
                     [0.0, s, input_wh[1] / 2 - s * float(center[1])]], dtype=np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2×3 affine."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def crop_persons(image: np.ndarray, boxes: np.ndarray, input_wh: tuple[int, int], mean, std,
                 swap_rb: bool = True, padding: float = BBOX_PADDING):
    """BGR image + boxes → (N×3×H×W float32 normalised crops, centres, scales).

    `cv2.warpAffine` bilinear with a constant-0 border (black before normalisation), then BGR→RGB and
    (x − mean)/std — exactly the mmpose test pipeline.
    """
    centers, scales = box_to_center_scale(boxes, input_wh, padding)
    crops = np.zeros((len(centers), input_wh[1], input_wh[0], 3), dtype=np.uint8)
    for i, (c, s) in enumerate(zip(centers, scales)):
        if s[0] == 0:  # a degenerate box (valid_boxes): the empty crop
            continue
        crops[i] = cv2.warpAffine(image, warp_matrix(c, s, input_wh), input_wh, flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if len(centers) == 0:
        return np.zeros((0, 3, input_wh[1], input_wh[0]), np.float32), centers, scales
    return normalize_to_nchw(crops, mean, std, swap_rb), centers, scales


# --------------------------------------------------------------------------- SimCC decode
def _argmax_max(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmax and max over the last axis where a NaN never wins (it counts as −inf; first maximum wins)."""
    index, top = logits.argmax(-1), logits.max(-1)
    bad = np.isnan(top)  # numpy's argmax/max return the first NaN: redo only those rows
    if bad.any():
        rows = np.where(np.isnan(logits[bad]), -np.inf, logits[bad])
        index[bad], top[bad] = rows.argmax(-1), rows.max(-1)
    return index, top


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """Keypoint scores made finite (NaN → −SCORE_LIMIT, ±inf → ±SCORE_LIMIT): what decode.cu writes too."""
    return np.nan_to_num(np.asarray(scores, np.float32), nan=-SCORE_LIMIT, posinf=SCORE_LIMIT, neginf=-SCORE_LIMIT)


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray,
                 split_ratio: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Argmax per axis on raw logits → keypoints [N,K,2] in crop pixels and scores [N,K].

    score = min(max_x, max_y); a keypoint whose score is ≤ 0 gets location (−1, −1). Non-finite logits (one
    rule, mirrored by decode.cu): a NaN never wins the argmax, and the score is made finite (`finite_scores`),
    so an all-NaN axis gives an invalid keypoint, never a NaN.
    """
    (ix, mx), (iy, my) = _argmax_max(simcc_x), _argmax_max(simcc_y)
    scores = finite_scores(np.minimum(mx, my))
    locs = np.stack([ix, iy], axis=-1).astype(np.float32) / np.float32(split_ratio)
    locs[scores <= 0] = -1.0
    return locs, scores


def simcc_decode_z(simcc_z: np.ndarray, split_ratio: float = 2.0) -> np.ndarray:
    """Depth bins → crop-space z (argmax / split ratio, NaN never wins); the score never uses z."""
    return _argmax_max(simcc_z)[0].astype(np.float32) / np.float32(split_ratio)


def crop_to_image(keypoints: np.ndarray, centers: np.ndarray, scales: np.ndarray,
                  input_wh: tuple[int, int]) -> np.ndarray:
    """Crop pixels → image pixels: k / input_size · scale + centre − scale / 2 (per person)."""
    size = np.asarray(input_wh, np.float32)
    return keypoints / size * scales[:, None, :] + centers[:, None, :] - 0.5 * scales[:, None, :]


def image_to_crop(points: np.ndarray, centers: np.ndarray, scales: np.ndarray,
                  input_wh: tuple[int, int]) -> np.ndarray:
    """Inverse of `crop_to_image` (used to build SimCC targets in tests and calibration)."""
    size = np.asarray(input_wh, np.float32)
    return (points - centers[:, None, :] + 0.5 * scales[:, None, :]) / scales[:, None, :] * size


def flip_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, flip_indices) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a horizontally flipped crop → logits in the original frame (swap left/right, mirror x)."""
    return simcc_x[:, flip_indices, ::-1], simcc_y[:, flip_indices]


# --------------------------------------------------------------------------- RTMW3D
@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics for RTMW3D back-projection; principal point defaults to the image centre."""

    fx: float = 1145.04940459
    fy: float = 1143.78109572
    cx: float | None = None
    cy: float | None = None


def depth_to_camera(keypoints_img: np.ndarray, z_crop: np.ndarray, depth_bins_half: float, z_range: float,
                    root_z: float, camera: Camera, image_wh: tuple[int, int]) -> np.ndarray:
    """RTMW3D: crop-space z → root-relative depth → camera-space (X, Y, Z) per keypoint.

    z_rel = (z / (D/2) − 1) · z_range with D/2 = input_w/2 (mmpose's formula); Z = z_rel + root_z;
    X = (u − cx) / fx · Z, Y = (v − cy) / fy · Z. We use the true image centre (cx = w/2, cy = h/2);
    mmpose's default swaps them for non-square images (rtmw_facts §0.6h), which we do not copy.
    """
    z_rel = (z_crop / np.float32(depth_bins_half) - 1.0) * np.float32(z_range)
    depth = z_rel + np.float32(root_z)
    cx = image_wh[0] / 2 if camera.cx is None else camera.cx
    cy = image_wh[1] / 2 if camera.cy is None else camera.cy
    x = (keypoints_img[..., 0] - cx) / camera.fx * depth
    y = (keypoints_img[..., 1] - cy) / camera.fy * depth
    return np.stack([x, y, depth], axis=-1).astype(np.float32)


# --------------------------------------------------------------------------- boxes from keypoints (skip-frame)
# Growth of a keypoint box about its centre before it stands in for a detection: rtmlib's PoseTracker
# (`pose_to_bbox(expansion=1.25)`) and mmdeploy's PoseTracker (`pose_bbox_scale 1.25`) both use 1.25
# (../shared/reference/deployment_landscape.md §1.1–1.2, rtmw_facts.md §5). The crop then pads it by
# BBOX_PADDING like any detector box.
KEYPOINT_BOX_EXPANSION = 1.25


def keypoints_to_boxes(keypoints: np.ndarray, scores: np.ndarray, threshold: float,
                       expansion: float = KEYPOINT_BOX_EXPANSION,
                       image_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Per person, the bounding box of the keypoints scoring above `threshold`, grown by `expansion` about
    its centre: [N,K,2] keypoints + [N,K] scores → [N,4] xyxy (float32). Clipped to the image when
    `image_wh` is given. A person without such a keypoint gets the empty box (0, 0, 0, 0)."""
    kpts = np.asarray(keypoints, np.float32)
    if len(kpts) == 0:
        return np.zeros((0, 4), np.float32)
    valid = np.asarray(scores).reshape(kpts.shape[:2]) > threshold
    lo = np.where(valid[..., None], kpts, np.inf).min(axis=1)
    hi = np.where(valid[..., None], kpts, -np.inf).max(axis=1)
    seen = valid.any(axis=1)
    lo, hi = np.where(seen[:, None], lo, 0.0), np.where(seen[:, None], hi, 0.0)
    center, half = (lo + hi) * 0.5, (hi - lo) * (0.5 * expansion)
    boxes = np.concatenate([center - half, center + half], axis=1).astype(np.float32)
    if image_wh is not None:
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, image_wh[0])
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, image_wh[1])
    return boxes


# --------------------------------------------------------------------------- keypoint similarity
def oks(pred: np.ndarray, ref: np.ndarray, valid: np.ndarray, sigmas: np.ndarray, area: float) -> np.ndarray:
    """Object keypoint similarity per sample: mean over valid keypoints of exp(−d² / (2·area·(2σ)²)).
    [N,K,2] predictions and references, [N,K] validity, [K] sigmas → [N] (1.0 where nothing is valid)."""
    d2 = np.sum((pred - ref) ** 2, axis=-1)
    e = np.exp(-d2 / (2.0 * area * (2.0 * sigmas) ** 2))
    counts = valid.sum(axis=1)
    return np.where(counts > 0, (e * valid).sum(axis=1) / np.maximum(counts, 1), 1.0)

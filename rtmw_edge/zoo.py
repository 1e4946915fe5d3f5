"""The registry of named models: everything a model needs besides its weights, in one place.

Each entry carries its architecture (deepen/widen factors, head type), input size, keypoint set, flip
indices, normalisation and colour order, SimCC codec, detector settings, the official checkpoint URL and
the sha256 prefix that OpenMMLab puts in the file name. Nothing here imports torch.
Sources: rtmw_facts.md §1 (configs), §3 (maths), §4 (results), §6 (URLs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UnknownModelError
from .keypoints import KEYPOINT_SETS, KeypointSet

POSE_MEAN_RGB = (123.675, 116.28, 103.53)   # applied after BGR→RGB (PoseDataPreprocessor bgr_to_rgb=True)
POSE_STD_RGB = (58.395, 57.12, 57.375)
DET_MEAN_BGR = (103.53, 116.28, 123.675)    # RTMDet runs on BGR (bgr_to_rgb=False)
DET_STD_BGR = (57.375, 57.12, 58.395)

# (deepen, widen) of the CSPNeXt sizes
SIZES = {"t": (0.167, 0.375), "s": (0.33, 0.5), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}

_OPENMMLAB = "https://download.openmmlab.com/mmpose/v1/"
# `--pose-spec NAME`: a registered model whose settings apply to a foreign pose ONNX (rtmw_edge.pose_models)
POSE_SPEC_HELP = ("Foreign pose ONNX without rtmw_edge metadata or SDK JSON: the registered model whose settings "
                  "apply (e.g. rtmw-m-256x192).")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str                          # "pose2d" | "pose3d" | "detector"
    arch: str                          # "rtmw" | "rtmw3d" | "rtmpose" | "rtmdet"
    size: str                          # t/s/m/l/x (nano for the detector)
    deepen: float
    widen: float
    input_size: tuple[int, int]        # (w, h) as in the configs
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: str                         # channel order the normalisation expects: "rgb" | "bgr"
    checkpoint_url: str
    hash_prefix: str | None            # first hex digits of the file's sha256 (from its official name)
    params: int                        # parameters of the architecture (official counts where published)
    description: str = ""
    keypoint_set: str | None = None    # pose models
    simcc_split_ratio: float = 2.0
    simcc_sigma: tuple[float, ...] = ()
    decode_visibility: bool = False
    flip_test: bool = True             # what the official test config does
    metrics: dict[str, float] = field(default_factory=dict)  # published AP on the model's benchmark
    gflops: float | None = None
    # RTMW3D depth codec and default camera (rtmw_facts §3.7)
    z_range: float | None = None
    root_z: float | None = None
    focal: tuple[float, float] | None = None
    # RTMDet
    strides: tuple[int, ...] = ()
    neck_channels: int = 0
    neck_blocks: int = 0
    depthwise: bool = False
    share_conv: bool = False
    exp_on_reg: bool = False
    score_threshold: float = 0.05
    nms_iou: float = 0.6
    max_per_image: int = 100
    nms_pre: int = 1000
    pad_value: int = 114

    @property
    def is_pose(self) -> bool:
        return self.task in ("pose2d", "pose3d")

    @property
    def keypoints(self) -> KeypointSet | None:
        return KEYPOINT_SETS[self.keypoint_set] if self.keypoint_set else None

    @property
    def num_keypoints(self) -> int:
        return self.keypoints.num_keypoints if self.keypoints else 0

    @property
    def flip_indices(self) -> list[int]:
        return self.keypoints.flip_indices if self.keypoints else []

    @property
    def head_channels(self) -> int:
        """Channels of stage4 / P5: what the pose head reads."""
        return int(1024 * self.widen)

    @property
    def simcc_bins(self) -> tuple[int, ...]:
        w, h = self.input_size
        bins = (int(w * self.simcc_split_ratio), int(h * self.simcc_split_ratio))
        return bins + (bins[0],) if self.task == "pose3d" else bins

    @property
    def checkpoint_filename(self) -> str:
        return self.checkpoint_url.rsplit("/", 1)[-1]

    def as_dict(self) -> dict:
        """JSON-friendly view, used by `models info` and the ONNX metadata."""
        from dataclasses import asdict

        d = asdict(self)
        d["num_keypoints"] = self.num_keypoints
        if self.keypoints:
            d["keypoint_names"] = list(self.keypoints.names)
            d["flip_indices"] = self.flip_indices
        return d


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _pose(name: str, arch: str, size: str, input_size: tuple[int, int], url: str, hash_prefix: str | None,
          params: int, keypoint_set: str = "coco-wholebody", **kw) -> ModelSpec:
    deepen, widen = SIZES[size]
    sigma = (4.9, 5.66) if input_size == (192, 256) else (6.0, 6.93)
    task = "pose3d" if arch == "rtmw3d" else "pose2d"
    if task == "pose3d":
        sigma = sigma + (6.0,)
    return register(ModelSpec(
        name=name, task=task, arch=arch, size=size, deepen=deepen, widen=widen, input_size=input_size,
        mean=POSE_MEAN_RGB, std=POSE_STD_RGB, color="rgb", checkpoint_url=url, hash_prefix=hash_prefix,
        params=params, keypoint_set=keypoint_set, simcc_sigma=sigma, **kw))


# --- RTMW (Cocktail14, 133 keypoints), rtmw_facts §1.3, §4.1, §6 -----------------------------------
def _wb_metrics(body, foot, face, hand, whole, whole_ar):
    return {"body_ap": body, "foot_ap": foot, "face_ap": face, "hand_ap": hand,
            "wholebody_ap": whole, "wholebody_ar": whole_ar}


_RTMW = _OPENMMLAB + "projects/rtmw/"
_pose("rtmw-m-256x192", "rtmw", "m", (192, 256),
      _RTMW + "rtmw-dw-l-m_simcc-cocktail14_270e-256x192-20231122.pth", None, 32_258_207,
      metrics=_wb_metrics(.676, .671, .783, .491, .582, .673), gflops=4.3,
      description="RTMW-m whole body (distilled from RTMW-l), the fastest RTMW")
_pose("rtmw-l-256x192", "rtmw", "l", (192, 256),
      _RTMW + "rtmw-dw-x-l_simcc-cocktail14_270e-256x192-20231122.pth", None, 57_201_207,
      metrics=_wb_metrics(.743, .763, .834, .598, .660, .746), gflops=7.9,
      description="RTMW-l whole body (distilled from RTMW-x)")
_pose("rtmw-x-256x192", "rtmw", "x", (192, 256),
      _RTMW + "rtmw-x_simcc-cocktail14_pt-ucoco_270e-256x192-13a2546d_20231208.pth", "13a2546d", 92_041_903,
      metrics=_wb_metrics(.746, .770, .844, .610, .672, .752), gflops=13.1, description="RTMW-x whole body")
_pose("rtmw-l-384x288", "rtmw", "l", (288, 384),
      _RTMW + "rtmw-dw-x-l_simcc-cocktail14_270e-384x288-20231122.pth", None, 57_354_295,
      metrics=_wb_metrics(.761, .793, .884, .663, .701, .780), gflops=17.7,
      description="RTMW-l whole body at 384x288 (distilled from RTMW-x)")
_pose("rtmw-x-384x288", "rtmw", "x", (288, 384),
      _RTMW + "rtmw-x_simcc-cocktail14_pt-ucoco_270e-384x288-f840f204_20231122.pth", "f840f204", 92_194_991,
      metrics=_wb_metrics(.763, .796, .884, .664, .702, .781), gflops=29.3,
      description="RTMW-x whole body at 384x288, the most accurate RTMW")

# --- RTMW3D (projects/rtmpose3d), §1.4, §3.7, §4.2 ----------------------------------------------------
_RTMW3D = _OPENMMLAB + "wholebody_3d_keypoint/rtmw3d/"
_3D = dict(z_range=2.1744869, root_z=5.14388, focal=(1145.04940459, 1143.78109572), flip_test=False)
_pose("rtmw3d-l-384x288", "rtmw3d", "l", (288, 384),
      _RTMW3D + "rtmw3d-l_8xb64_cocktail14-384x288-794dbc78_20240626.pth", "794dbc78", 57_501_751,
      metrics={"wholebody_ap": .678, "h3wb_mpjpe": .056}, **_3D,
      description="RTMW3D-l: 133 keypoints with root-relative depth")
_pose("rtmw3d-x-384x288", "rtmw3d", "x", (288, 384),
      _RTMW3D + "rtmw3d-x_8xb64_cocktail14-384x288-b0a0eab7_20240626.pth", "b0a0eab7", 92_342_447,
      metrics={"wholebody_ap": .680, "h3wb_mpjpe": .057}, **_3D,
      description="RTMW3D-x: 133 keypoints with root-relative depth")

# --- RTMPose whole body (COCO-WholeBody), §4.3 ----------------------------------------------------------
_V1 = _OPENMMLAB + "projects/rtmposev1/"
_pose("rtmpose-wb-m-256x192", "rtmpose", "m", (192, 256),
      _V1 + "rtmpose-m_simcc-coco-wholebody_pt-aic-coco_270e-256x192-cd5e845c_20230123.pth", "cd5e845c",
      17_953_039, metrics={"wholebody_ap": .582, "wholebody_ar": .674}, gflops=2.22,
      description="RTMPose-m whole body (COCO-WholeBody)")
_pose("rtmpose-wb-l-256x192", "rtmpose", "l", (192, 256),
      _V1 + "rtmpose-l_simcc-coco-wholebody_pt-aic-coco_270e-256x192-6f206314_20230124.pth", "6f206314",
      33_480_871, metrics={"wholebody_ap": .611, "wholebody_ar": .700}, gflops=4.52,
      description="RTMPose-l whole body (COCO-WholeBody)")
_pose("rtmpose-wb-l-384x288", "rtmpose", "l", (288, 384),
      _V1 + "rtmpose-l_simcc-coco-wholebody_pt-aic-coco_270e-384x288-eaeb96c8_20230125.pth", "eaeb96c8",
      33_610_919, metrics={"wholebody_ap": .648, "wholebody_ar": .730}, gflops=10.07,
      description="RTMPose-l whole body at 384x288 (COCO-WholeBody)")

# --- DWPose (COCO-WholeBody + UBody, distilled): same architectures as RTMPose-WB, §6 -------------------
for _size, _res, _hash, _ap, _flops, _params in (("t", (192, 256), "dcf277bf", .485, 0.5, 5_519_779),
                                                 ("s", (192, 256), "3fd922c8", .538, 0.9, 8_383_575),
                                                 ("m", (192, 256), "c8b76419", .606, 2.22, 17_953_039),
                                                 ("l", (192, 256), "4d6dfc62", .631, 4.52, 33_480_871),
                                                 ("l", (288, 384), "2438fd99", .665, 10.07, 33_610_919)):
    _tag = f"{_res[1]}x{_res[0]}"
    _pose(f"dwpose-{_size}-{_tag}", "rtmpose", _size, _res,
          _V1 + f"rtmpose-{_size}_simcc-ucoco_dw-ucoco_270e-{_tag}-{_hash}_20230728.pth", _hash, _params,
          metrics={"wholebody_ap": _ap}, gflops=_flops,
          description=f"DWPose-{_size} whole body (RTMPose-{_size} distilled on COCO-WholeBody + UBody)")

# --- RTMPose body (17 COCO keypoints, AIC+COCO) -----------------------------------------------------------
for _size, _file, _hash, _ap, _params in (
        ("t", "rtmpose-tiny_simcc-aic-coco_pt-aic-coco_420e-256x192-cfc8f33d_20230126.pth", "cfc8f33d", .685,
         3_337_007),
        ("s", "rtmpose-s_simcc-aic-coco_pt-aic-coco_420e-256x192-fcb2599b_20230126.pth", "fcb2599b", .722,
         5_473_251),
        ("m", "rtmpose-m_simcc-aic-coco_pt-aic-coco_420e-256x192-63eb25f7_20230126.pth", "63eb25f7", .758,
         13_587_611),
        ("l", "rtmpose-l_simcc-aic-coco_pt-aic-coco_420e-256x192-f016ffe0_20230126.pth", "f016ffe0", .765,
         27_660_339)):
    _pose(f"rtmpose-{_size}-256x192", "rtmpose", _size, (192, 256), _V1 + _file, _hash, _params,
          keypoint_set="coco", metrics={"coco_ap": _ap}, description=f"RTMPose-{_size} body (17 keypoints)")

# --- RTMDet person detectors (projects/rtmpose/rtmdet/person), §3.8 ------------------------------------
_RTMPOSE = _OPENMMLAB + "projects/rtmpose/"
register(ModelSpec(
    name="rtmdet-nano-person", task="detector", arch="rtmdet", size="nano", deepen=0.33, widen=0.25,
    input_size=(320, 320), mean=DET_MEAN_BGR, std=DET_STD_BGR, color="bgr",
    checkpoint_url=_RTMPOSE + "rtmdet_nano_8xb32-100e_coco-obj365-person-05d8511e.pth", hash_prefix="05d8511e",
    params=994_423, strides=(8, 16, 32), neck_channels=64, neck_blocks=1, depthwise=True, share_conv=False,
    exp_on_reg=False, metrics={"person_ap": .403}, gflops=0.31, flip_test=False,
    description="RTMDet-nano person detector, 320x320 (the RTMPose pipeline's CPU detector)"))
register(ModelSpec(
    name="rtmdet-m-person", task="detector", arch="rtmdet", size="m", deepen=0.67, widen=0.75,
    input_size=(640, 640), mean=DET_MEAN_BGR, std=DET_STD_BGR, color="bgr",
    checkpoint_url=_RTMPOSE + "rtmdet_m_8xb32-100e_coco-obj365-person-235e8209.pth", hash_prefix="235e8209",
    params=24_663_447, strides=(8, 16, 32), neck_channels=192, neck_blocks=2, depthwise=False, share_conv=True,
    exp_on_reg=True, metrics={"person_ap": .625}, gflops=38.95, flip_test=False,
    description="RTMDet-m person detector, 640x640 (mmpose's default human detector)"))


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one task (pose2d / pose3d / detector / pose)."""
    names = []
    for name, spec in _REGISTRY.items():
        if task is None or spec.task == task or (task == "pose" and spec.is_pose):
            names.append(name)
    return names


def get_spec(name: str) -> ModelSpec:
    """The registry entry of `name`, or an UnknownModelError that lists close names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `rtmw-edge models list`"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None

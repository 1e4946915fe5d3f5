"""PyTorch model zoo: `create_model(name, checkpoint)` builds a registered model, optionally with weights.

Importing this package does not import torch; `create_model` does (pip install 'rtmw-edge[export]').
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import require
from ..zoo import ModelSpec, get_spec, list_models
from .checkpoint import load_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["create_model", "list_models", "get_model_config", "build_model", "ModelSpec"]


def get_model_config(name: str) -> ModelSpec:
    """The registry entry (input size, keypoints, normalisation, codec, URLs) of a model."""
    return get_spec(name)


def build_model(spec: ModelSpec) -> nn.Module:
    """The architecture of `spec` with freshly initialised weights (train mode, no checkpoint)."""
    require("torch", "export")
    from .cspnext import CSPNeXt, CSPNeXtPAFPN, stage_channels
    from .heads import RTMCCHead, RTMW3DHead, RTMWHead
    from .pose import TopDownPoseModel
    from .rtmdet import RTMDet

    if spec.arch == "rtmdet":
        return RTMDet(spec.deepen, spec.widen, spec.neck_channels, spec.neck_blocks, spec.depthwise,
                      spec.share_conv, spec.exp_on_reg, spec.strides)
    c = stage_channels(spec.widen)
    k = spec.num_keypoints
    if spec.arch == "rtmpose":  # RTMPose / DWPose: stage4 only, no neck
        return TopDownPoseModel(CSPNeXt(spec.deepen, spec.widen, (4,)), None,
                                RTMCCHead(c[3], k, spec.input_size, spec.simcc_split_ratio))
    # RTMW / RTMW3D: stages 2-4 → PAFPN without output convs → (P4, P5)
    neck = CSPNeXtPAFPN((c[1], c[2], c[3]), None, 2, out_indices=(1, 2))
    head_cls = RTMW3DHead if spec.arch == "rtmw3d" else RTMWHead
    return TopDownPoseModel(CSPNeXt(spec.deepen, spec.widen, (2, 3, 4)), neck,
                            head_cls(c[3], k, spec.input_size, spec.simcc_split_ratio))


def create_model(name: str, checkpoint: str | Path | None = None, *, trust_checkpoint: bool = False) -> nn.Module:
    """Build the registered model `name` in eval mode, loading `checkpoint` (mmpose/mmdet .pth) if given.

    Pose models: `forward(x)` → `(simcc_x, simcc_y)` (+ `simcc_z` for RTMW3D), raw logits.
    Detectors: `forward(x)` → `(cls_scores, bbox_preds)`, lists over strides 8/16/32.
    The registry entry is attached as `model.spec`.
    """
    spec = get_spec(name)
    model = build_model(spec)
    if checkpoint is not None:
        report = load_checkpoint(model, checkpoint, model_name=name, trust=trust_checkpoint)
        if report.ignored:
            import logging

            logging.getLogger("rtmw_edge").warning("%s: ignored %d distillation keys not used at inference (%s)",
                                                   checkpoint, len(report.ignored), ", ".join(report.ignored[:3]))
    model.spec = spec
    return model.eval()

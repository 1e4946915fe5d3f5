"""RTMDet person detector: CSPNeXt + PAFPN (with output convs) + RTMDetSepBNHead.

`forward` returns the raw per-level head outputs exactly like the official head: `cls_scores` (logits,
no sigmoid) and `bbox_preds` (l, t, r, b distances already multiplied by the stride; `exp` first when
`exp_on_reg`). Box decoding lives in `rtmw_edge.geometry` and in the exported graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .cspnext import CSPNeXt, CSPNeXtPAFPN, stage_channels
from .layers import conv_block


class RTMDetSepBNHead(nn.Module):
    """Separate conv towers per level (BN never shared; conv weights shared across levels if asked)."""

    def __init__(self, channels: int, num_classes: int = 1, stacked_convs: int = 2,
                 strides: tuple[int, ...] = (8, 16, 32), share_conv: bool = True, exp_on_reg: bool = False,
                 depthwise: bool = False) -> None:
        super().__init__()
        self.strides = strides
        self.exp_on_reg = exp_on_reg

        def tower() -> nn.ModuleList:
            return nn.ModuleList([conv_block(channels, channels, 3, depthwise=depthwise)
                                  for _ in range(stacked_convs)])

        self.cls_convs = nn.ModuleList([tower() for _ in strides])
        self.reg_convs = nn.ModuleList([tower() for _ in strides])
        self.rtm_cls = nn.ModuleList([nn.Conv2d(channels, num_classes, 1) for _ in strides])
        self.rtm_reg = nn.ModuleList([nn.Conv2d(channels, 4, 1) for _ in strides])
        if share_conv:  # RTMDet-s/m/l/x: one set of conv weights, a BatchNorm per level
            for towers in (self.cls_convs, self.reg_convs):
                for level in towers[1:]:
                    for i, layer in enumerate(level):
                        layer.conv = towers[0][i].conv
        prior = 0.01  # classification bias so that sigmoid starts near 1 %, as the official init
        for cls in self.rtm_cls:
            nn.init.constant_(cls.bias, -math.log((1 - prior) / prior))

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cls_scores, bbox_preds = [], []
        for i, (x, stride) in enumerate(zip(feats, self.strides)):
            cls_feat, reg_feat = x, x
            for layer in self.cls_convs[i]:
                cls_feat = layer(cls_feat)
            for layer in self.reg_convs[i]:
                reg_feat = layer(reg_feat)
            reg = self.rtm_reg[i](reg_feat)
            cls_scores.append(self.rtm_cls[i](cls_feat))
            bbox_preds.append((reg.exp() if self.exp_on_reg else reg) * stride)
        return cls_scores, bbox_preds


class RTMDet(nn.Module):
    """Single-class RTMDet as used for the person detectors of RTMPose/RTMW."""

    def __init__(self, deepen: float, widen: float, neck_channels: int, neck_blocks: int, depthwise: bool,
                 share_conv: bool, exp_on_reg: bool, strides: tuple[int, ...] = (8, 16, 32)) -> None:
        super().__init__()
        c = stage_channels(widen)
        self.backbone = CSPNeXt(deepen, widen, (2, 3, 4), depthwise=depthwise)
        self.neck = CSPNeXtPAFPN((c[1], c[2], c[3]), neck_channels, neck_blocks, depthwise=depthwise)
        self.bbox_head = RTMDetSepBNHead(neck_channels, 1, 2, strides, share_conv, exp_on_reg, depthwise)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.bbox_head(self.neck(self.backbone(x)))

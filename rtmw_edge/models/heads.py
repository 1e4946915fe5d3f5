"""SimCC pose heads: RTMCCHead (RTMPose / DWPose), RTMWHead (P5 + HEM branches), RTMW3DHead (+ depth).

All of them end in the gated attention unit (GAU, `RTMCCBlock`) over one token per keypoint and one
linear classifier per axis. They return raw SimCC logits: no softmax, no flip.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import ConvModule

GAU_HIDDEN = 256   # token width after the MLP (`gau_cfg.hidden_dims`)
GAU_S = 128        # width of the shared q/k projection (`s`)
GAU_EXPANSION = 2  # u/v width = 2 · 256 = 512 (`expansion_factor`)


class ScaleNorm(nn.Module):
    """x / max(‖x‖₂ · dim^-½, eps) · g over the last axis (one learned gain `g`)."""

    fp16_safe = False  # switched on while exporting ONNX (rtmw_edge.export.fp16_safe_scalenorm)

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp16_safe:
            return self.forward_fp16_safe(x)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g

    def forward_fp16_safe(self, x: torch.Tensor) -> torch.Tensor:
        """The same value with a sum of squares that cannot overflow FP16.

        x / max(‖x‖·d^-½, eps) = (x/m) / max(‖x/m‖·d^-½, eps/m) for any m > 0. With m = max|x| every
        square is ≤ 1, so the reduction is ≤ d; the naive form passes 65504 once |x| ≳ 16 over 256 values.
        """
        m = x.abs().amax(dim=-1, keepdim=True).clamp(min=self.eps)
        xs = x / m
        norm = torch.linalg.vector_norm(xs, dim=-1, keepdim=True) * self.scale
        return xs / torch.maximum(norm, self.eps / m) * self.g


class Scale(nn.Module):
    """Learned per-channel scale of the GAU shortcut."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class RTMCCBlock(nn.Module):
    """Gated attention unit, self-attention form, as configured for RTMPose/RTMW.

    q and k are per-dimension affine maps (gamma, beta) of one shared projection `base`; the attention
    kernel is relu(q·kᵀ/√s)² — squared ReLU, no softmax, no 1/K normalisation.
    """

    fp16_safe = False  # switched on while exporting ONNX, like ScaleNorm.fp16_safe

    def __init__(self, dims: int = GAU_HIDDEN, s: int = GAU_S, expansion: int = GAU_EXPANSION) -> None:
        super().__init__()
        self.s = s
        self.e = dims * expansion
        self.o = nn.Linear(self.e, dims, bias=False)
        self.uv = nn.Linear(dims, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.rand(2, s))
        self.beta = nn.Parameter(torch.rand(2, s))
        self.ln = ScaleNorm(dims)
        self.res_scale = Scale(dims)
        self.act = nn.SiLU()

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        x = self.ln(x_in)
        u, v, base = torch.split(self.act(self.uv(x)), [self.e, self.e, self.s], dim=-1)
        base = base.unsqueeze(2) * self.gamma + self.beta        # B×K×2×s
        q, k = base[:, :, 0], base[:, :, 1]
        if self.fp16_safe:
            # same value, smaller intermediate: scale q and k by s^-1/4 before the s-term dot product
            q, k = q * self.s ** -0.25, k * self.s ** -0.25
            qk = torch.bmm(q, k.transpose(1, 2))
        else:
            qk = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.s)  # B×K×K
        kernel = torch.square(torch.relu(qk))
        y = self.o(u * torch.bmm(kernel, v))
        return self.res_scale(x_in) + y


def _token_mlp(tokens: int) -> nn.Sequential:
    return nn.Sequential(ScaleNorm(tokens), nn.Linear(tokens, GAU_S, bias=False))


class RTMCCHead(nn.Module):
    """RTMPose / DWPose head: 7×7 conv to K maps on P5 → tokens → MLP → GAU → cls_x / cls_y."""

    def __init__(self, in_channels: int, num_keypoints: int, input_size: tuple[int, int],
                 split_ratio: float = 2.0) -> None:
        super().__init__()
        w, h = input_size
        tokens = (w // 32) * (h // 32)
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, 7, padding=3)
        self.mlp = nn.Sequential(ScaleNorm(tokens), nn.Linear(tokens, GAU_HIDDEN, bias=False))
        self.gau = RTMCCBlock()
        self.cls_x = nn.Linear(GAU_HIDDEN, int(w * split_ratio), bias=False)
        self.cls_y = nn.Linear(GAU_HIDDEN, int(h * split_ratio), bias=False)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.mlp(self.final_layer(feats[-1]).flatten(2))
        tokens = self.gau(tokens)
        return self.cls_x(tokens), self.cls_y(tokens)


class RTMWHead(nn.Module):
    """RTMW head: P5 branch plus the HEM branch (PixelShuffle(P5) → conv_dec → ⊕ P4), fused in the GAU.

    Each branch makes 128-wide keypoint tokens; they are concatenated to 256 before the GAU.
    """

    def __init__(self, in_channels: int, num_keypoints: int, input_size: tuple[int, int],
                 split_ratio: float = 2.0) -> None:
        super().__init__()
        w, h = input_size
        c = in_channels
        tokens = (w // 32) * (h // 32)
        self.ps = nn.PixelShuffle(2)
        self.conv_dec = ConvModule(c // 4, c // 4, 7, act="relu")
        self.final_layer = ConvModule(c, num_keypoints, 7, act="relu")
        self.final_layer2 = ConvModule(c // 2 + c // 4, num_keypoints, 7, act="relu")
        self.mlp = _token_mlp(tokens)
        self.mlp2 = _token_mlp(tokens * 4)
        self.gau = RTMCCBlock()
        self.cls_x = nn.Linear(GAU_HIDDEN, int(w * split_ratio), bias=False)
        self.cls_y = nn.Linear(GAU_HIDDEN, int(h * split_ratio), bias=False)

    def tokens(self, feats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        p4, p5 = feats
        top = self.mlp(self.final_layer(p5).flatten(2))                       # B×K×128
        dec = self.conv_dec(self.ps(p5))                                      # B×C/4×2h×2w
        bottom = self.mlp2(self.final_layer2(torch.cat([dec, p4], dim=1)).flatten(2))
        return self.gau(torch.cat([top, bottom], dim=2))                      # B×K×256

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokens(feats)
        return self.cls_x(tokens), self.cls_y(tokens)


class RTMW3DHead(RTMWHead):
    """RTMW head plus a depth classifier `cls_z` with 2·input_w bins (input_size = (w, h, d=w))."""

    def __init__(self, in_channels: int, num_keypoints: int, input_size: tuple[int, int],
                 split_ratio: float = 2.0) -> None:
        super().__init__(in_channels, num_keypoints, input_size, split_ratio)
        self.cls_z = nn.Linear(GAU_HIDDEN, int(input_size[0] * split_ratio), bias=False)

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        tokens = self.tokens(feats)
        return self.cls_x(tokens), self.cls_y(tokens), self.cls_z(tokens)

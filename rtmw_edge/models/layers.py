"""Building blocks shared by CSPNeXt, the PAFPN necks and the heads.

Attribute names follow the official OpenMMLab module tree (mmcv ConvModule: `conv` then `bn`, the
activation has no parameters), so that `state_dict()` keys equal the keys of official checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

# Every BatchNorm of RTMW/RTMPose/RTMDet is built from the configs' `norm_cfg=dict(type='BN'|'SyncBN')`,
# i.e. with PyTorch's defaults (the class defaults momentum=0.03, eps=0.001 are overridden).
BN_EPS = 1e-5


def _activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}")


class ConvModule(nn.Module):
    """Conv2d (no bias: a BatchNorm follows) → BatchNorm → activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str | None = "silu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.activate = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise k×k ConvModule followed by a pointwise 1×1 ConvModule, each with BN and activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, act: str | None = "silu") -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, kernel, stride, groups=cin, act=act)
        self.pointwise_conv = ConvModule(cin, cout, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


def conv_block(cin: int, cout: int, kernel: int, stride: int = 1, depthwise: bool = False) -> nn.Module:
    """The 'conv' of a config with `use_depthwise`: separable when asked, plain otherwise."""
    if depthwise:
        return DepthwiseSeparableConvModule(cin, cout, kernel, stride)
    return ConvModule(cin, cout, kernel, stride)


class ChannelAttention(nn.Module):
    """x · hardsigmoid(fc(avgpool(x))) — the squeeze-excite variant of CSPNeXt."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)
        self.act = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.fc(self.global_avgpool(x)))


class CSPNeXtBlock(nn.Module):
    """3×3 conv then a 5×5 depthwise-separable conv, with an optional identity shortcut."""

    def __init__(self, channels: int, add_identity: bool, depthwise: bool) -> None:
        super().__init__()
        self.conv1 = conv_block(channels, channels, 3, depthwise=depthwise)
        self.conv2 = DepthwiseSeparableConvModule(channels, channels, 5)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPLayer(nn.Module):
    """Cross-stage partial layer: final(attn(cat[blocks(main(x)), short(x)]))."""

    def __init__(self, cin: int, cout: int, num_blocks: int, add_identity: bool = True,
                 channel_attention: bool = False, depthwise: bool = False) -> None:
        super().__init__()
        mid = int(cout * 0.5)  # expand_ratio = 0.5 in every model we support
        # Registration order = official state_dict order: main_conv, short_conv, final_conv, blocks, attention.
        self.main_conv = ConvModule(cin, mid, 1)
        self.short_conv = ConvModule(cin, mid, 1)
        self.final_conv = ConvModule(2 * mid, cout, 1)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(mid, add_identity, depthwise) for _ in range(num_blocks)])
        self.attention = ChannelAttention(2 * mid) if channel_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = self.short_conv(x)  # evaluated first, as upstream: traced graphs then list convs alike
        y = torch.cat([self.blocks(self.main_conv(x)), short], dim=1)
        if self.attention is not None:
            y = self.attention(y)
        return self.final_conv(y)


class SPPBottleneck(nn.Module):
    """YOLOv3-style spatial pyramid pooling: parallel max-pools 5/9/13 (not SPPF)."""

    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        mid = cin // 2
        self.conv1 = ConvModule(cin, mid, 1)
        self.poolings = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in kernels])
        self.conv2 = ConvModule(mid * (len(kernels) + 1), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.poolings], dim=1))

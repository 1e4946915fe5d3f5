"""CSPNeXt backbone (P5 arch) and the CSPNeXt PAFPN neck, in both the RTMW and the RTMDet form."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvModule, CSPLayer, SPPBottleneck, conv_block

# P5 arch: (in, out, blocks, add_identity, use_spp) for stage1..4 before deepen/widen scaling.
P5_STAGES = ((64, 128, 3, True, False), (128, 256, 6, True, False),
             (256, 512, 6, True, False), (512, 1024, 3, False, True))


def stage_channels(widen: float) -> tuple[int, int, int, int]:
    """Output channels of stage1..4 for a widen factor."""
    return tuple(int(out * widen) for _, out, _, _, _ in P5_STAGES)  # type: ignore[return-value]


class CSPNeXt(nn.Module):
    """CSPNeXt P5: a 3-conv stem then four stages at strides 4, 8, 16, 32 (outputs of `out_stages`)."""

    def __init__(self, deepen: float, widen: float, out_stages: tuple[int, ...] = (2, 3, 4),
                 depthwise: bool = False, channel_attention: bool = True) -> None:
        super().__init__()
        self.out_stages = out_stages
        s0, s1 = int(64 * widen // 2), int(64 * widen)
        self.stem = nn.Sequential(ConvModule(3, s0, 3, 2), ConvModule(s0, s0, 3), ConvModule(s0, s1, 3))
        for i, (cin, cout, blocks, add_identity, use_spp) in enumerate(P5_STAGES, start=1):
            cin, cout = int(cin * widen), int(cout * widen)
            layers: list[nn.Module] = [conv_block(cin, cout, 3, 2, depthwise)]
            if use_spp:
                layers.append(SPPBottleneck(cout, cout))
            layers.append(CSPLayer(cout, cout, max(round(blocks * deepen), 1), add_identity and not use_spp,
                                   channel_attention, depthwise))
            self.add_module(f"stage{i}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"stage{i}")(x)
            if i in self.out_stages:
                outs.append(x)
        return tuple(outs)


class CSPNeXtPAFPN(nn.Module):
    """Top-down then bottom-up path over three levels (P3, P4, P5).

    RTMW form: `out_channels=None` (no output convs) and `out_indices=(1, 2)` → (P4, P5).
    RTMDet form: 3×3 output convs to `out_channels` on every level → (P3, P4, P5).
    """

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int | None, num_csp_blocks: int,
                 out_indices: tuple[int, ...] = (0, 1, 2), depthwise: bool = False) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        self.out_indices = out_indices
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

        def csp(cin: int, cout: int) -> CSPLayer:
            return CSPLayer(cin, cout, num_csp_blocks, add_identity=False, depthwise=depthwise)

        self.reduce_layers = nn.ModuleList([ConvModule(c5, c4, 1), ConvModule(c4, c3, 1)])
        self.top_down_blocks = nn.ModuleList([csp(2 * c4, c4), csp(2 * c3, c3)])
        self.downsamples = nn.ModuleList([conv_block(c3, c3, 3, 2, depthwise), conv_block(c4, c4, 3, 2, depthwise)])
        self.bottom_up_blocks = nn.ModuleList([csp(2 * c3, c4), csp(2 * c4, c5)])
        self.out_convs = None
        if out_channels is not None:
            self.out_convs = nn.ModuleList([conv_block(c, out_channels, 3, depthwise=depthwise)
                                            for c in in_channels])

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        p3, p4, p5 = feats
        # top-down: reduce the coarser level, upsample, fuse with the finer one
        r5 = self.reduce_layers[0](p5)
        t4 = self.top_down_blocks[0](torch.cat([self.upsample(r5), p4], dim=1))
        r4 = self.reduce_layers[1](t4)
        t3 = self.top_down_blocks[1](torch.cat([self.upsample(r4), p3], dim=1))
        # bottom-up: downsample the finer level, fuse with the reduced coarser one
        o4 = self.bottom_up_blocks[0](torch.cat([self.downsamples[0](t3), r4], dim=1))
        o5 = self.bottom_up_blocks[1](torch.cat([self.downsamples[1](o4), r5], dim=1))
        outs = [t3, o4, o5]
        if self.out_convs is not None:
            outs = [conv(o) for conv, o in zip(self.out_convs, outs)]
        return tuple(outs[i] for i in self.out_indices)

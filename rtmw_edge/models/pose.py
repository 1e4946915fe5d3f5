"""Top-down pose model: backbone → (neck) → SimCC head, with the official `backbone./neck./head.` keys."""

from __future__ import annotations

import torch
from torch import nn


class TopDownPoseModel(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module | None, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: normalised RGB crops, N×3×H×W float32 → raw SimCC logits per axis (N×K×bins)."""
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        return self.head(feats)

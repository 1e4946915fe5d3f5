"""Copy real weights out of an ONNX export into a zoo model (test helper, not part of the package).

`rtmdet-nano_person_320_rawhead.onnx` (shared/models) holds the official RTMDet-nano person weights with every
BatchNorm folded into the convolution before it. Its initialisers come in two kinds:
- named ones, `model.<state_dict key>` (channel attention fcs, rtm_cls / rtm_reg), copied by name;
- anonymous ones, `onnx::Conv_<n>`, a weight and a bias per folded Conv node. Sorted by <n> they follow the
  order in which the model's bias-free Conv2d modules run, which we record with forward hooks.
Each folded conv weight goes to the conv, and the BatchNorm after it becomes "+ bias": weight 1, bias = folded
bias, running_mean 0, running_var 1 - eps (so that sqrt(var + eps) is exactly 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from rtmw_edge.models.layers import ConvModule

_ANON = re.compile(r"onnx::Conv_(\d+)")


def _conv_execution_order(model: nn.Module, input_hw: tuple[int, int]) -> list[nn.Conv2d]:
    """Bias-free Conv2d modules in the order a forward pass on a zero image runs them (each once)."""
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda mod, _inp, _out: order.append(mod))
             for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is None]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_hw))
    finally:
        for hook in hooks:
            hook.remove()
    if len({id(m) for m in order}) != len(order):
        raise ValueError("a bias-free conv ran twice (shared convs cannot be mapped by execution order)")
    return order


def load_folded_rtmdet(model: nn.Module, onnx_path: str | Path) -> dict[str, int]:
    """Load the BN-folded RTMDet weights of `onnx_path` into `model` (eval mode); return counts of what was set.

    Raises ValueError when the export and the model disagree in names, counts or shapes, so that a passing
    comparison downstream really compares the same network.
    """
    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    (image,) = [i for i in graph.input if i.name not in inits]
    input_hw = tuple(d.dim_value for d in image.type.tensor_type.shape.dim[2:])

    model.eval()
    state = model.state_dict()
    named = {name[len("model."):]: value for name, value in inits.items()
             if name.startswith("model.") and value.ndim > 0}
    unknown = sorted(set(named) - set(state))
    if unknown:
        raise ValueError(f"ONNX initialisers without a model key: {unknown[:5]}")

    folded = []  # (n, weight, bias) per anonymous Conv node
    for node in graph.node:
        if node.op_type == "Conv" and (match := _ANON.fullmatch(node.input[1])):
            if len(node.input) < 3 or not _ANON.fullmatch(node.input[2]):
                raise ValueError(f"folded conv {node.name} has no anonymous bias")
            folded.append((int(match.group(1)), inits[node.input[1]], inits[node.input[2]]))
    folded.sort(key=lambda item: item[0])

    convs = _conv_execution_order(model, input_hw)  # type: ignore[arg-type]
    if len(convs) != len(folded):
        raise ValueError(f"{len(folded)} folded convs in the ONNX file, {len(convs)} bias-free convs in the model")
    bn_after = {id(m.conv): m.bn for m in model.modules() if isinstance(m, ConvModule)}
    module_name = {id(m): name for name, m in model.named_modules()}
    covered = set(named)

    with torch.no_grad():
        for key, value in named.items():
            if tuple(value.shape) != tuple(state[key].shape):
                raise ValueError(f"{key}: ONNX {list(value.shape)} vs model {list(state[key].shape)}")
            state[key].copy_(torch.tensor(value))
        for conv, (n, weight, bias) in zip(convs, folded):
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise ValueError(f"onnx::Conv_{n}: ONNX {list(weight.shape)} vs model {list(conv.weight.shape)}")
            bn = bn_after[id(conv)]
            conv.weight.copy_(torch.tensor(weight))
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.tensor(bias))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            covered.update(f"{module_name[id(m)]}.{leaf}" for m, leaves in (
                (conv, ("weight",)), (bn, ("weight", "bias", "running_mean", "running_var"))) for leaf in leaves)
    left = [k for k in state if k not in covered and not k.endswith("num_batches_tracked")]
    if left:
        raise ValueError(f"{len(left)} model entries got no ONNX weight: {left[:5]}")
    return {"named": len(named), "folded": len(folded)}

"""Explicit Q/DQ INT8 for TensorRT 10.3 and 11: layers, MACs, calibration statistics, placement, checks.

The graph rewrite is ONNX Runtime's QDQ quantizer (the engine behind `quantize_static`, QDQ format); what
this module decides is *what* it quantizes and *with which ranges*:

- **Layers** are the Conv nodes with a constant weight (`find_layers`). Gemm/MatMul (the RTMW SimCC head,
  GAU attention, `cls_x/cls_y/cls_z`) always stay in float: they are the parts users report breaking.
- **Placement** (TensorRT's rules for explicit quantization: Q/DQ on the *inputs* of the ops it runs in
  INT8, never on outputs, so that it fuses Conv + bias + SiLU and the following Q into one INT8 kernel):
  every quantised Conv gets Q/DQ on its activation input and a per-output-channel DQ on an INT8 weight
  (axis 0); its bias stays float (TensorRT folds it). Residual ``Add``s and ``Concat``s whose data inputs
  all come out of quantised conv blocks get Q/DQ on those inputs (the Concat's with one shared scale, so
  TensorRT concatenates INT8 without requantising), so they run inside the INT8 region instead of
  forcing a reformat to float between two INT8 kernels (`Placement.residual`).
- **Ranges**: `collect_statistics` streams the calibration batches once through ONNX Runtime (CPU) with
  the tensors to calibrate exposed as outputs; `ranges.RangeCollector` turns them into symmetric clips.
- **Checks**: `validate_qdq` lists everything TensorRT would reject or mis-handle in a Q/DQ graph.

Excluded layers keep float weights and no Q/DQ on their input.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import RtmwEdgeError, UsageError
from .ranges import RangeCollector

MIN_OPSET = 13  # per-axis DequantizeLinear
ACT_QMAX = 127


# --------------------------------------------------------------------------- graph helpers
def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def prepare_model(model):
    """A copy of `model` ready for quantisation: opset ≥ 13, every node named uniquely, shapes inferred."""
    import onnx
    from onnx import shape_inference, version_converter

    model = onnx.ModelProto.FromString(model.SerializeToString())
    if _opset(model) < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise RtmwEdgeError(f"cannot convert the model from opset {_opset(model)} to {MIN_OPSET}: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}" if not node.name else f"{node.name}_{i}"
        seen.add(node.name)
    del model.graph.value_info[:]
    return shape_inference.infer_shapes(model)


def _shapes(model) -> dict[str, list[int | None]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class Layer:
    """One quantisable Conv: its node, its activation input and weight, and its multiply-accumulates."""

    name: str
    activation: str
    weight: str
    weight_shape: tuple[int, ...]
    groups: int
    output_hw: tuple[int, int] | None
    macs: int  # per image: Cout · Cin/groups · kh · kw · Hout · Wout (0 when the output size is unknown)

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.weight_shape[0]


def find_layers(model, input_hw: tuple[int, int] | None = None) -> list[Layer]:
    """The Conv nodes with a constant weight, in graph order, with their MACs from shape inference.

    A graph with a dynamic input height/width gets its output sizes from `input_hw` (h, w): the size the
    calibration data has (batch 1)."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes = _shapes(model)
    if input_hw is not None and any(v is None for v in (shapes.get(model.graph.input[0].name) or [None])[2:]):
        import onnx
        from onnx import shape_inference

        fixed = onnx.ModelProto.FromString(model.SerializeToString())
        dims = fixed.graph.input[0].type.tensor_type.shape.dim
        for d, v in zip(dims, (1, dims[1].dim_value or 3, *input_hw)):
            d.ClearField("dim_param")
            d.dim_value = int(v)
        del fixed.graph.value_info[:]
        shapes = _shapes(shape_inference.infer_shapes(fixed))
    layers = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        groups = int(_attr(node, "group", 1))
        out = shapes.get(node.output[0])
        hw = (out[2], out[3]) if out and len(out) == 4 and out[2] and out[3] else None
        macs = int(np.prod(w)) * hw[0] * hw[1] if hw else 0  # w = Cout × Cin/groups × kh × kw
        layers.append(Layer(node.name, node.input[0], node.input[1], w, groups, hw, macs))
    return layers


def int8_mac_share(layers: list[Layer], quantized: Iterable[str]) -> float:
    """Fraction of all conv MACs in the quantised layers."""
    total = sum(layer.macs for layer in layers)
    q = set(quantized)
    return sum(layer.macs for layer in layers if layer.name in q) / total if total else 0.0


def match_layers(layers: list[Layer], patterns: Iterable[str]) -> list[str]:
    """Layer names matching any shell-style pattern (``*`` wildcards; a pattern without one matches as a
    substring), in graph order. A pattern that matches nothing raises, naming a few layers."""
    names = [layer.name for layer in layers]
    hits: list[str] = []
    for pattern in patterns:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        found = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        if not found:
            raise UsageError(f"--exclude {pattern!r} matches no conv layer (e.g. {', '.join(names[:3])}, ...)")
        hits.extend(n for n in found if n not in hits)
    return [n for n in names if n in hits]


# --------------------------------------------------------------------------- placement
@dataclass
class Placement:
    """Which tensors get Q/DQ: the activation inputs of the quantised convs, plus the data inputs of the
    residual Adds / Concats that sit between quantised blocks (`residual=True`)."""

    layers: list[str]
    conv_inputs: list[str] = field(default_factory=list)
    join_nodes: list[str] = field(default_factory=list)       # Add / Concat nodes quantised on their inputs
    join_inputs: list[str] = field(default_factory=list)

    @property
    def tensors(self) -> list[str]:
        return list(dict.fromkeys(self.conv_inputs + self.join_inputs))


def _conv_block_source(model, tensor: str, producers: dict, quantized: set[str]) -> bool:
    """Does `tensor` come out of a quantised conv block (Conv, optionally followed by its activation:
    Sigmoid·x (SiLU), Relu, Clip, HardSwish, or a residual Add / Concat of such blocks)?"""
    seen = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = producers.get(t)
        if node is None:
            return False
        if node.op_type == "Conv":
            if node.name not in quantized:
                return False
            continue
        if node.op_type in ("Sigmoid", "Relu", "Clip", "HardSwish", "Add", "Concat"):
            stack.extend(i for i in node.input[:1 if node.op_type in ("Sigmoid", "Relu", "Clip", "HardSwish")
                                                   else len(node.input)] if i)
            continue
        if node.op_type == "Mul":  # SiLU: x · sigmoid(x)
            a, b = node.input[0], node.input[1]
            pa, pb = producers.get(a), producers.get(b)
            if pb is not None and pb.op_type == "Sigmoid" and pb.input[0] == a:
                stack.append(a)
                continue
            if pa is not None and pa.op_type == "Sigmoid" and pa.input[0] == b:
                stack.append(b)
                continue
            return False
        return False
    return True


def plan_placement(model, layers: list[Layer], quantized: Iterable[str], residual: bool = True) -> Placement:
    """Q/DQ tensors for quantising `quantized` (layer names) — see the module docstring."""
    q = [layer.name for layer in layers if layer.name in set(quantized)]
    qset = set(q)
    by_name = {layer.name: layer for layer in layers}
    place = Placement(layers=q, conv_inputs=list(dict.fromkeys(by_name[n].activation for n in q)))
    if not residual:
        return place
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("Add", "Concat"):
            continue
        inputs = [i for i in node.input if i and i not in inits]
        if len(inputs) < 2 or not all(_conv_block_source(model, i, producers, qset) for i in inputs):
            continue
        place.join_nodes.append(node.name)
        place.join_inputs.extend(i for i in inputs if i not in place.join_inputs)
    return place


# --------------------------------------------------------------------------- calibration statistics
def collect_statistics(model, tensors: list[str], batches: Iterable[np.ndarray],
                       on_batch: Callable[[int], None] | None = None, bins: int | None = None,
                       threads: int | None = None, max_batch: int | None = None) -> RangeCollector:
    """Run the float model on every calibration batch (ONNX Runtime, CPU) and histogram `tensors`.

    Memory: one batch of activations at a time. A static-batch graph is fed in chunks of its batch size,
    a dynamic one in chunks of `max_batch` (1 for detectors: the mmdeploy end-to-end graphs declare a
    dynamic batch but only run batch 1).
    """
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else max_batch
    collector = RangeCollector(tensors, **({"bins": bins} if bins else {}))
    for batch in batches:
        for chunk in _chunks(batch, fixed):
            values = session.run(tensors, {inp.name: chunk})
            collector.update(dict(zip(tensors, values)))
        if on_batch:
            on_batch(len(batch))
    if collector.batches == 0:
        raise RtmwEdgeError("no calibration data: the calibration set is empty")
    return collector


def _chunks(batch: np.ndarray, fixed: int | None) -> Iterator[np.ndarray]:
    """`batch` in chunks of `fixed` samples (the last one short; a static graph's batch is 1 in practice)."""
    batch = np.ascontiguousarray(batch, np.float32)
    if fixed is None:
        yield batch
        return
    for i in range(0, len(batch), fixed):
        yield batch[i:i + fixed]


# --------------------------------------------------------------------------- the Q/DQ rewrite
def shared_clips(model, amax: dict[str, float]) -> dict[str, float]:
    """The clips with one shared value (the largest) for all data inputs of every Concat whose inputs are
    all calibrated, so that an INT8 Concat needs no requantisation. Applied whether or not a given Concat
    ends up quantised: a tensor keeps one scale for every subset of INT8 layers (sensitivity trials and
    the final graph agree)."""
    clip = dict(amax)
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        inputs = [i for i in node.input if i and i not in inits]
        if len(inputs) > 1 and all(i in clip for i in inputs):
            shared = max(clip[i] for i in inputs)
            for i in inputs:
                clip[i] = shared
    return clip


def quantize_qdq(model, placement: Placement, amax: dict[str, float]):
    """Insert Q/DQ (ONNX Runtime's QDQ quantizer): symmetric INT8, per-channel weights on axis 0, per-tensor
    activations with the clips `amax` (pass them through `shared_clips` first), no Q/DQ on outputs, float
    biases. Returns a new ModelProto."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    missing = [t for t in placement.tensors if t not in amax]
    if missing:
        raise RtmwEdgeError(f"no calibration range for {len(missing)} tensors (e.g. {missing[0]}): "
                            "the statistics were collected for another placement; rerun without the cache")
    clip = dict(amax)
    ranges = {}
    for t in placement.tensors:
        a = np.float32(max(clip[t], 1e-8))
        ranges[t] = TensorData(lowest=-a, highest=a)
    work = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = placement.layers + placement.join_nodes
    if not nodes:
        return work
    quantizer = QDQQuantizer(
        work, True, False, QuantType.QInt8, QuantType.QInt8, TensorsData(CalibrationMethod.MinMax, ranges),
        nodes, [], ["Conv", "Add", "Concat"],
        {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
         "OpTypesToExcludeOutputQuantization": ["Conv", "Add", "Concat"], "DedicatedQDQPair": False,
         "QDQOpTypePerChannelSupportToAxis": {"Conv": 0}})
    out = quantizer.quantize_model()
    out = out.model if hasattr(out, "model") else out
    _restore_float_consumers(out, set(nodes))
    toposort(out.graph)  # the quantizer appends Q/DQ nodes at the end; TensorRT's parser wants graph order
    return out


def toposort(graph) -> None:
    """Reorder `graph.node` topologically, in place (stable: keeps the given order where it can)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RtmwEdgeError("cannot order the graph topologically (a cycle or a missing tensor)")
        pending = rest
    nodes = [type(n)() for n in ordered]
    for new, old in zip(nodes, ordered):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(nodes)


def dequantized_inputs(node, producers: dict):
    """Each input of `node` that a DequantizeLinear makes: (input index, the DQ node, the float tensor its
    QuantizeLinear reads — None where the DQ reads a constant, i.e. a quantised weight). `producers` maps a
    tensor name to the node that makes it."""
    for k, name in enumerate(node.input):
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        yield k, dq, (q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None)


def _restore_float_consumers(model, quantized_nodes: set[str]) -> None:
    """ONNX Runtime shares one Q/DQ pair per tensor among *all* its consumers; give every consumer that is
    not quantised (an excluded conv, a SiLU, a float Add) the float tensor back, and drop the pairs that
    nobody reads any more. Only the quantised nodes then see quantisation error — in ONNX Runtime exactly
    as in TensorRT."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in quantized_nodes or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, _dq, before_q in dequantized_inputs(node, producers):
            if before_q is not None:
                node.input[k] = before_q
    outputs = {o.name for o in model.graph.output}
    while True:  # remove Q/DQ nodes without consumers (a DQ first, then its Q)
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in used]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in list(model.graph.initializer):
        if init.name not in used:
            model.graph.initializer.remove(init)


# --------------------------------------------------------------------------- checks
def validate_qdq(model, excluded: Iterable[str] = ()) -> list[str]:
    """Problems TensorRT (10.3 and 11) would have with this Q/DQ graph; empty when it is well formed.

    Checks: nodes in topological order; default-domain opset ≥ 13; every QuantizeLinear / DequantizeLinear
    pair symmetric (zero point present, INT8, all zeros) with a positive scale; per-channel DQs on axis 0
    with one scale per output channel; every Q followed by DQs only; every quantised Conv's weight is an
    INT8 initialiser behind a per-channel DQ; no Q/DQ at all on the inputs of the `excluded` conv layers.
    """
    from onnx import TensorProto, numpy_helper

    problems = []
    if _opset(model) < MIN_OPSET:
        problems.append(f"opset {_opset(model)} < {MIN_OPSET}")
    seen = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node:
        late = [i for i in node.input if i not in seen]
        if late:
            problems.append(f"{node.name}: input {late[0]} is made later (nodes not topologically sorted)")
            break
        seen.update(node.output)
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def const(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name}: {node.op_type} in domain {node.domain!r} (TensorRT wants the ONNX one)")
        scale = const(node.input[1]) if len(node.input) > 1 else None
        zp = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None:
            problems.append(f"{node.name}: scale is not a constant")
            continue
        if not np.all(np.asarray(scale) > 0):
            problems.append(f"{node.name}: non-positive scale")
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp_type = inits[zp_name].data_type if zp_name in inits else None
        if zp is None or zp_type != TensorProto.INT8:
            problems.append(f"{node.name}: zero point missing or not INT8 (TensorRT needs INT8, zero point 0)")
        elif np.any(np.asarray(zp) != 0):
            problems.append(f"{node.name}: asymmetric (zero point ≠ 0)")
        axis = _attr(node, "axis", 1)
        if np.asarray(scale).ndim == 1 and np.asarray(scale).size > 1:
            data = const(node.input[0]) if node.op_type == "DequantizeLinear" else None
            if axis != 0:
                problems.append(f"{node.name}: per-channel on axis {axis}, expected 0 (output channels)")
            if data is not None and data.shape[0] != np.asarray(scale).size:
                problems.append(f"{node.name}: {np.asarray(scale).size} scales for {data.shape[0]} output channels")
        if node.op_type == "QuantizeLinear":
            after = consumers.get(node.output[0], [])
            if not after or any(c.op_type != "DequantizeLinear" for c in after):
                problems.append(f"{node.name}: QuantizeLinear not followed by DequantizeLinear only")

    excluded = set(excluded)
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        w_prod = producers.get(node.input[1])
        a_prod = producers.get(node.input[0])
        q_weight = w_prod is not None and w_prod.op_type == "DequantizeLinear"
        q_act = a_prod is not None and a_prod.op_type == "DequantizeLinear"
        if node.name in excluded:
            if q_weight or q_act:
                problems.append(f"{node.name}: excluded layer has Q/DQ on its {'weight' if q_weight else 'input'}")
            continue
        if q_weight:
            w = const(w_prod.input[0])
            scale = const(w_prod.input[1])
            if w is None or w.dtype != np.int8:
                problems.append(f"{node.name}: quantised weight is not an INT8 constant")
            elif np.asarray(scale).size != w.shape[0]:
                problems.append(f"{node.name}: weight not per-channel on the output axis")
            if not q_act:
                problems.append(f"{node.name}: INT8 weight but float activation input")
    return problems


def qdq_summary(model) -> dict:
    """Counts of Q/DQ nodes and quantised convs in a graph (for reports)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [n.name for n in convs if (p := producers.get(n.input[1])) is not None
                 and p.op_type == "DequantizeLinear"]
    return {"quantize_linear": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
            "convs": len(convs), "int8_convs": len(quantized), "opset": _opset(model)}


# --------------------------------------------------------------------------- bias correction
def bias_correct(qmodel, float_model, layers: list[str], batches: Iterable[np.ndarray],
                 on_batch: Callable[[int], None] | None = None, threads: int | None = None,
                 max_batch: int | None = None) -> dict[str, float]:
    """Empirical bias correction, in place: for every quantised conv, the mean per output channel of
    (INT8 conv − float conv), both on the same input activation of the quantised network, over the
    calibration data, is subtracted from the conv's (float) bias. It removes the systematic shift each
    conv adds itself (clipping shrinks the large values of skewed activations; rounding is not zero-mean
    on them), not the error it inherits from the layers before; one pass, no change to the Q/DQ
    structure. Measured on RTMDet-nano it helps (docs/int8.md). Returns the mean |correction| per layer
    (the error still left, when called again on a corrected graph)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    probe = onnx.ModelProto.FromString(qmodel.SerializeToString())
    producers = {o: n for n in probe.graph.node for o in n.output}
    nodes = {n.name: n for n in probe.graph.node}
    float_nodes = {n.name: n for n in float_model.graph.node}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    outputs, todo = [], []
    for name in layers:
        node = nodes.get(name)
        dq = producers.get(node.input[0]) if node is not None else None
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        fnode = float_nodes[name]
        ref_inputs = [q.input[0]]
        for k, tensor in enumerate(fnode.input[1:3], start=1):
            copy = onnx.TensorProto()
            copy.CopyFrom(float_inits[tensor])
            copy.name = f"{name}_bc_ref{k}"
            probe.graph.initializer.append(copy)
            ref_inputs.append(copy.name)
        shadow = helper.make_node("Conv", ref_inputs, [f"{name}_bc_ref"], name=f"{name}_bc_ref")
        shadow.attribute.extend(node.attribute)
        probe.graph.node.append(shadow)
        outputs += [node.output[0], shadow.output[0]]
        todo.append(name)
    if not todo:
        return {}
    for o in outputs:
        probe.graph.output.append(helper.make_empty_tensor_value_info(o))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else max_batch
    sums: list[np.ndarray | None] = [None] * len(todo)
    positions = [0] * len(todo)
    for batch in batches:
        for chunk in _chunks(batch, fixed):
            values = session.run(outputs, {inp.name: chunk})
            for k in range(len(todo)):
                diff = values[2 * k] - values[2 * k + 1]
                d = diff.astype(np.float64).sum(axis=(0, 2, 3))
                sums[k] = d if sums[k] is None else sums[k] + d
                positions[k] += diff.shape[0] * diff.shape[2] * diff.shape[3]
        if on_batch:
            on_batch(len(batch))
    inits = {i.name: i for i in qmodel.graph.initializer}
    users: dict[str, int] = {}
    for n in qmodel.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    qnodes = {n.name: n for n in qmodel.graph.node}
    applied = {}
    for name, total, npos in zip(todo, sums, positions):
        if total is None or npos == 0:
            continue
        node = qnodes[name]
        delta = (total / npos).astype(np.float32)
        if len(node.input) > 2 and node.input[2] and users.get(node.input[2], 0) == 1:
            bias = inits[node.input[2]]
            value = numpy_helper.to_array(bias).astype(np.float32) - delta
            bias.CopyFrom(numpy_helper.from_array(value, bias.name))
        else:  # no bias, or a shared one: give this conv its own
            old = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] \
                else np.zeros_like(delta)
            new_name = f"{name}_bias_corrected"
            qmodel.graph.initializer.append(numpy_helper.from_array(old.astype(np.float32) - delta, new_name))
            if len(node.input) > 2:
                node.input[2] = new_name
            else:
                node.input.append(new_name)
        applied[name] = float(np.abs(delta).mean())
    return applied

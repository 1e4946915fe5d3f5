"""Per-layer sensitivity and `--auto-exclude`: which convs may run INT8 without hurting the outputs.

Re-quantising the graph for every trial would cost a rewrite and a new ONNX Runtime session per layer.
Instead `SwitchableModel` builds the fully quantised graph once and turns every quantised unit (a conv's
activation + weight, or a residual Add / Concat's inputs) into ``x + m·(DQ(Q(x)) − x)`` with ``m`` read
from an extra graph input: with m = 1 the unit computes exactly what the Q/DQ graph computes, with m = 0
it is float. One session then evaluates any subset of INT8 layers by feeding a 0/1 mask.

`layer_sensitivity` quantises one layer at a time (everything else float) and measures the output error
against FP32 on validation samples (calibration images, never the held-out report images); `frontier`
keeps the worst layers in float one by one and records fidelity and INT8 MAC share after each step;
`auto_exclude` stops at the first step that meets the fidelity target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import RtmwEdgeError
from .quantize import Layer, Placement, dequantized_inputs, int8_mac_share, quantize_qdq, toposort

MASK_INPUT = "rtmw_edge_qmask"


class SwitchableModel:
    """The fully quantised graph with a 0/1 switch per unit; `run(x, enabled)` → outputs in graph order."""

    def __init__(self, model, placement: Placement, amax: dict[str, float], threads: int | None = None,
                 max_batch: int | None = None) -> None:
        import onnxruntime as ort

        qmodel = quantize_qdq(model, placement, amax)
        self.units = list(placement.layers) + list(placement.join_nodes)
        graph = _make_switchable(qmodel, self.units, model)
        opts = ort.SessionOptions()
        # basic fusions only: with ORT_ENABLE_ALL the layout transforms round some values differently from
        # the plain Q/DQ graph, and a unit with m = 1 should compute exactly what the Q/DQ graph computes
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input_name = next(i.name for i in self.session.get_inputs() if i.name != MASK_INPUT)
        shape = next(i.shape for i in self.session.get_inputs() if i.name != MASK_INPUT)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else max_batch
        self.output_names = [o.name for o in self.session.get_outputs()]

    def mask(self, enabled) -> np.ndarray:
        on = set(enabled)
        return np.array([1.0 if u in on else 0.0 for u in self.units], np.float32)

    def run(self, x: np.ndarray, enabled) -> list[np.ndarray]:
        m = self.mask(enabled)
        step = self.fixed_batch or len(x)
        parts = [self.session.run(None, {self.input_name: x[i:i + step], MASK_INPUT: m})
                 for i in range(0, len(x), step)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]


def _make_switchable(qmodel, units: list[str], float_model):
    """Rewrite every quantised unit's DQ inputs into x + m_u·(dq − x) (see the module docstring); the float
    weights come back from `float_model` (the quantised graph keeps only the INT8 ones)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = qmodel.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node}
    graph.input.append(helper.make_tensor_value_info(MASK_INPUT, TensorProto.FLOAT, [len(units)]))
    new_nodes = []
    for k, unit in enumerate(units):
        node = next((n for n in graph.node if n.name == unit), None)
        if node is None:
            raise RtmwEdgeError(f"unit {unit} is not in the quantised graph")
        idx = f"{MASK_INPUT}_i{k}"
        graph.initializer.append(numpy_helper.from_array(np.array([k], np.int64), idx))
        m = f"{MASK_INPUT}_m{k}"
        new_nodes.append(helper.make_node("Gather", [MASK_INPUT, idx], [m], name=f"{m}_gather"))
        for j, dq, before_q in dequantized_inputs(node, producers):
            name = node.input[j]
            if before_q is not None:
                fp = before_q  # activation: the float tensor before Q
            elif dq.input[0] in inits and unit in float_nodes and j == 1:  # the weight: the float original
                fp = float_nodes[unit].input[1]
                if fp not in inits:
                    graph.initializer.append(float_inits[fp])
                    inits[fp] = float_inits[fp]
            else:
                continue
            base = f"{unit}_sw{j}"
            new_nodes += [helper.make_node("Sub", [name, fp], [f"{base}_d"], name=f"{base}_sub"),
                          helper.make_node("Mul", [f"{base}_d", m], [f"{base}_md"], name=f"{base}_mul"),
                          helper.make_node("Add", [fp, f"{base}_md"], [f"{base}_x"], name=f"{base}_add")]
            node.input[j] = f"{base}_x"
    graph.node.extend(new_nodes)
    # topological order: the new nodes read tensors made anywhere in the graph
    toposort(graph)
    return qmodel


# --------------------------------------------------------------------------- fidelity on validation tensors
Metric = Callable[[list[np.ndarray], list[np.ndarray]], dict]


@dataclass
class Step:
    """One point of the frontier: which layers are float, and what that gives."""

    float_layers: list[str]
    added: str | None
    int8_mac_share: float
    fidelity: dict

    def to_dict(self) -> dict:
        return asdict(self)


def layer_sensitivity(switch: SwitchableModel, x: np.ndarray, reference: list[np.ndarray], metric: Metric,
                      candidates: list[str], key: str, on_layer: Callable[[], None] | None = None) -> dict[str, float]:
    """Error `metric(...)[key]` with only that layer INT8, for every candidate (higher = more sensitive)."""
    out = {}
    for name in candidates:
        out[name] = float(metric(reference, switch.run(x, [name]))[key])
        if on_layer:
            on_layer()
    return out


def frontier(switch: SwitchableModel, layers: list[Layer], x: np.ndarray, reference: list[np.ndarray],
             metric: Metric, order: list[str], start_float: list[str], joins: list[str],
             meets: Callable[[dict], bool] | None = None, max_steps: int | None = None,
             min_int8_share: float = 0.0, on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """Keep the layers of `order` in float one at a time (starting from `start_float`), recording fidelity
    and INT8 MAC share. Stops when `meets(fidelity)` is true (auto-exclude), after `max_steps`, or when the
    INT8 share would drop below `min_int8_share`."""
    float_layers = list(start_float)
    steps = []
    names = [layer.name for layer in layers]
    todo = [n for n in order if n not in float_layers]
    added = None
    while True:
        int8 = [n for n in names if n not in set(float_layers)]
        share = int8_mac_share(layers, int8)
        fid = metric(reference, switch.run(x, int8 + joins))
        step = Step(list(float_layers), added, share, fid)
        steps.append(step)
        if on_step:
            on_step(step)
        if (meets is not None and meets(fid)) or not todo or (max_steps is not None and len(steps) > max_steps):
            break
        added = todo.pop(0)
        next_share = int8_mac_share(layers, [n for n in int8 if n != added])
        if next_share < min_int8_share:
            break
        float_layers.append(added)
    return steps

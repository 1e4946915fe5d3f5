"""PyTorch → ONNX for TensorRT: self-describing, FP16-safe graphs with optional in-graph decode.

One function, `export_onnx`, readable top to bottom: build the model → load weights → wrap it (flip
test, decode, detector box decoding + top-k) → trace to ONNX → simplify (onnxslim) → FP16 → metadata →
validate → write atomically. Heavy imports (torch, onnxslim, onnxconverter-common) happen inside.

Emitted op set (TensorRT 10.3 parses all of them): Conv, BatchNorm folded into Conv, Sigmoid, Mul, Add,
Concat, Split, Slice, MaxPool, GlobalAveragePool, HardSigmoid, Resize (nearest), DepthToSpace (CRD),
Relu, MatMul, ReduceL2/ReduceMax/ReduceSum, Abs, Div, Sqrt, Max, Clip, Reshape, Transpose, Unsqueeze,
Gather/GatherElements, ArgMax, Min, Where, Cast, TopK; NonMaxSuppression and ScatterND only with
`nms=True` (an ONNX Runtime convenience: TensorRT builds use the fixed-size top-k outputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from . import __version__
from .downloads import sha256_file
from .errors import CheckpointError, RtmwEdgeError, UsageError, require
from .models import build_model
from .models.checkpoint import load_checkpoint
from .onnx_meta import save_model_atomically, write_metadata
from .outputs import check_output
from .zoo import ModelSpec, get_spec

POSE_OUTPUTS = ("simcc_x", "simcc_y", "simcc_z")
DECODED_OUTPUTS = ("keypoints", "scores", "z")
DETECTOR_OUTPUTS = ("boxes", "scores")
# Subgraphs that stay FP32 in an FP16 export: ScaleNorm reductions, the GAU (q·kᵀ, squared ReLU,
# kernel·v sum over all keypoints), the token MLPs and SimCC classifiers, and everything after them.
FP16_PREFIXES = ("/model/backbone/", "/model/neck/", "/model/head/final_layer", "/model/head/conv_dec",
                 "/model/head/ps", "/model/bbox_head/cls_convs", "/model/bbox_head/reg_convs")


class ExportError(RtmwEdgeError):
    """The export could not be done (wrong checkpoint, tracing failure); bad arguments are `UsageError`s."""


@contextlib.contextmanager
def fp16_safe_scalenorm():
    """Trace ScaleNorm and the GAU in their FP16-friendly forms (same values, bounded intermediates)."""
    from .models.heads import RTMCCBlock, ScaleNorm

    previous = ScaleNorm.fp16_safe, RTMCCBlock.fp16_safe
    ScaleNorm.fp16_safe = RTMCCBlock.fp16_safe = True
    try:
        yield
    finally:
        ScaleNorm.fp16_safe, RTMCCBlock.fp16_safe = previous


def _pose_wrapper(model, spec: ModelSpec, decode: bool, flip_test: bool):
    import torch

    flip = torch.tensor(spec.flip_indices, dtype=torch.long)

    class PoseGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            if flip_test:
                # official flip test: run the mirrored crop too, map its logits back (swap left/right
                # keypoints, mirror the x bins) and average in logit space
                n = x.shape[0]
                outs = self.model(torch.cat([x, x.flip(-1)], dim=0))
                sx, sy = outs[0], outs[1]
                sx = (sx[:n] + sx[n:].index_select(1, flip).flip(-1)) * 0.5
                sy = (sy[:n] + sy[n:].index_select(1, flip)) * 0.5
                outs = (sx, sy)
            else:
                outs = self.model(x)
            if not decode:
                return outs
            return simcc_decode_torch(outs, spec.simcc_split_ratio)

    return PoseGraph()


def simcc_decode_torch(outs, split_ratio: float):
    """In-graph twin of `geometry.simcc_decode` (+ `simcc_decode_z`): ArgMax/ReduceMax per axis."""
    import torch

    sx, sy = outs[0], outs[1]
    score = torch.minimum(sx.amax(-1), sy.amax(-1))
    locs = torch.stack([sx.argmax(-1), sy.argmax(-1)], dim=-1).to(torch.float32) / split_ratio
    locs = torch.where((score <= 0).unsqueeze(-1), torch.full_like(locs, -1.0), locs)
    if len(outs) == 3:
        return locs, score, outs[2].argmax(-1).to(torch.float32) / split_ratio
    return locs, score


def _detector_wrapper(model, spec: ModelSpec, topk: int):
    import torch

    from .geometry import grid_priors

    w, h = spec.input_size
    priors = torch.from_numpy(grid_priors((h, w), spec.strides))
    k = min(topk, priors.shape[0])

    class DetectorGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("priors", priors)

        def forward(self, x):
            cls_scores, bbox_preds = self.model(x)
            scores = torch.cat([c.flatten(2) for c in cls_scores], dim=2)[:, 0].sigmoid()       # B×N
            dist = torch.cat([b.flatten(2) for b in bbox_preds], dim=2).transpose(1, 2)        # B×N×4
            boxes = torch.cat([self.priors - dist[..., :2], self.priors + dist[..., 2:]], dim=-1)
            top_scores, index = scores.topk(k, dim=1)
            top_boxes = boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
            return top_boxes, top_scores

    return DetectorGraph(), k


def export_graph(model, spec: ModelSpec, *, decode: bool = False, flip_test: bool = False, topk: int = 1000):
    """The graph an export traces, as a PyTorch module: `model` with the export's wrappers (pose: flip test and
    in-graph SimCC decode; detector: box decoding and top-k). Returns (module, output names, the detector's
    top-k or None). The export, `check`'s PyTorch reference and the PyTorch engine all run this."""
    if spec.is_pose:
        n_out = 3 if spec.task == "pose3d" else 2
        return (_pose_wrapper(model, spec, decode, flip_test),
                list((DECODED_OUTPUTS if decode else POSE_OUTPUTS)[:n_out]), None)
    graph, k = _detector_wrapper(model, spec, topk)
    return graph, list(DETECTOR_OUTPUTS), k


def build_weights(spec: ModelSpec, *, checkpoint: str | Path | None = None, seed: int = 0,
                  trust_checkpoint: bool = False):
    """The model an export starts from: the architecture initialised under `seed` (the caller's random state
    is left as it was), then the checkpoint's weights when one is given; eval mode, float32."""
    torch = require("torch", "export")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, model_name=spec.name, trust=trust_checkpoint)
    return model.eval().float()


def weights_sha256(model) -> str:
    """sha256 of a model's state: every parameter and buffer (name, dtype, shape, bytes) in name order. An export
    records it, so whoever rebuilds the model later can prove it holds the very weights the export was traced
    with (the PyTorch engine does)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _append_nms(model_proto, iou: float, score_threshold: float) -> None:
    """ONNX NonMaxSuppression over the top-k boxes; suppressed slots get score 0 (shapes stay fixed)."""
    from onnx import TensorProto, helper

    g = model_proto.graph
    boxes_out, scores_out = g.output[0].name, g.output[1].name
    nodes = [
        helper.make_node("Unsqueeze", [scores_out, "nms_axis1"], ["nms_scores3"]),
        helper.make_node("NonMaxSuppression", [boxes_out, "nms_scores3", "nms_max", "nms_iou", "nms_thr"],
                         ["nms_selected"]),
        helper.make_node("Gather", ["nms_selected", "nms_cols"], ["nms_index"], axis=1),       # (batch, box)
        helper.make_node("Shape", [scores_out], ["nms_shape"]),
        helper.make_node("ConstantOfShape", ["nms_shape"], ["nms_zeros"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("Shape", ["nms_index"], ["nms_index_shape"]),
        helper.make_node("Slice", ["nms_index_shape", "nms_start", "nms_end"], ["nms_count"]),
        helper.make_node("ConstantOfShape", ["nms_count"], ["nms_ones"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ScatterND", ["nms_zeros", "nms_index", "nms_ones"], ["nms_keep"]),
        helper.make_node("Mul", [scores_out, "nms_keep"], ["scores_nms"]),
        helper.make_node("Identity", [boxes_out], ["boxes_nms"]),
    ]
    g.initializer.extend([
        helper.make_tensor("nms_axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("nms_max", TensorProto.INT64, [1], [1 << 30]),
        helper.make_tensor("nms_iou", TensorProto.FLOAT, [1], [iou]),
        helper.make_tensor("nms_thr", TensorProto.FLOAT, [1], [score_threshold]),
        helper.make_tensor("nms_cols", TensorProto.INT64, [2], [0, 2]),
        helper.make_tensor("nms_start", TensorProto.INT64, [1], [0]),
        helper.make_tensor("nms_end", TensorProto.INT64, [1], [1]),
    ])
    g.node.extend(nodes)
    old = {o.name: o for o in g.output}
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, _dims(old[boxes_out])),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, _dims(old[scores_out])),
    ])
    # rename the raw outputs so the public names stay "boxes"/"scores"
    for node in g.node:
        for i, name in enumerate(node.output):
            if name == boxes_out:
                node.output[i] = "boxes_topk"
            elif name == scores_out:
                node.output[i] = "scores_topk"
        for i, name in enumerate(node.input):
            if name == boxes_out:
                node.input[i] = "boxes_topk"
            elif name == scores_out:
                node.input[i] = "scores_topk"
    for node in g.node:
        node.output[:] = ["boxes" if n == "boxes_nms" else "scores" if n == "scores_nms" else n for n in node.output]


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def to_fp16(model_proto):
    """FP16 weights and activations for the conv trunk (`FP16_PREFIXES`), FP32 for the overflow-prone
    rest, FP32 graph I/O; a Cast is inserted wherever a tensor crosses between the two regions.

    Written here rather than taken from onnxconverter-common, whose block-list mode fails on these graphs
    ("downstream node of the second cast node should be graph output") and which has no notion of
    inputs that must stay FP32 (Resize `roi`/`scales`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model_proto = onnx.shape_inference.infer_shapes(model_proto)  # dtypes of intermediate tensors
    g = model_proto.graph
    nodes = list(g.node)  # protobuf wrappers are not stable objects: index them once
    half_nodes = {i for i, n in enumerate(nodes) if n.name.startswith(FP16_PREFIXES)}
    float_inits = {i.name: i for i in g.initializer if i.data_type == TensorProto.FLOAT}
    half_tensors: set[str] = set()   # tensors produced in FP16
    for i in half_nodes:
        half_tensors.update(nodes[i].output)
    keep_fp32_inputs = {"Resize": {1, 2}}
    new_nodes, casts, new_inits = [], {}, {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to, name=casts[key]))
        return casts[key]

    out_nodes = []
    for index, n in enumerate(nodes):
        new_nodes = []
        if index in half_nodes:
            for i, name in enumerate(n.input):
                if not name or i in keep_fp32_inputs.get(n.op_type, ()):
                    continue
                if name in float_inits:
                    if name not in new_inits:
                        arr = numpy_helper.to_array(float_inits[name]).astype("float16")
                        new_inits[name] = numpy_helper.from_array(arr, name + "__fp16")
                    n.input[i] = name + "__fp16"
                elif name not in half_tensors and _is_float_tensor(g, name):
                    n.input[i] = cast(name, TensorProto.FLOAT16)
        else:
            for i, name in enumerate(n.input):
                if name in half_tensors:
                    n.input[i] = cast(name, TensorProto.FLOAT)
        out_nodes.extend(new_nodes)
        out_nodes.append(n)
    for o in g.output:
        if o.name in half_tensors:  # never happens with the prefixes above, but keep I/O FP32 regardless
            raise RtmwEdgeError(f"FP16 conversion would make output {o.name} half precision")
    copies = [onnx.NodeProto() for _ in out_nodes]
    for c, n in zip(copies, out_nodes):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies)
    g.initializer.extend(new_inits.values())
    used = {name for n in g.node for name in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model_proto)


def _is_float_tensor(graph, name: str) -> bool:
    """True unless the tensor is known to be non-float (graph inputs and int initialisers)."""
    from onnx import TensorProto

    for vi in list(graph.input) + list(graph.value_info):
        if vi.name == name:
            return vi.type.tensor_type.elem_type == TensorProto.FLOAT
    for init in graph.initializer:
        if init.name == name:
            return init.data_type == TensorProto.FLOAT
    return True


def build_metadata(spec: ModelSpec, *, outputs: list[str], batch, decode: bool, flip_test: bool, precision: str,
                   checkpoint_sha256: str | None, topk: int | None = None, nms: bool = False,
                   weights: dict | None = None) -> dict:
    meta = {
        "name": spec.name, "task": spec.task, "arch": spec.arch, "input_name": "input",
        "input_size": list(spec.input_size), "batch": batch, "mean": list(spec.mean), "std": list(spec.std),
        "color": spec.color, "outputs": outputs, "decoded": decode, "flip_test": flip_test, "precision": precision,
        "checkpoint_sha256": checkpoint_sha256, "package_version": __version__,
    }
    if weights is not None:  # {"from": "checkpoint" | "random-init" | "model", "seed": int | None, "sha256": ...}
        meta["weights"] = weights
    if spec.is_pose:
        meta.update({
            "keypoint_set": spec.keypoint_set, "num_keypoints": spec.num_keypoints,
            "keypoint_names": list(spec.keypoints.names), "flip_indices": spec.flip_indices,
            "simcc_split_ratio": spec.simcc_split_ratio, "simcc_sigma": list(spec.simcc_sigma),
            "decode_visibility": spec.decode_visibility,
        })
        if spec.task == "pose3d":
            meta.update({"z_range": spec.z_range, "root_z": spec.root_z, "focal": list(spec.focal)})
    else:
        meta.update({
            "strides": list(spec.strides), "score_threshold": spec.score_threshold, "nms_iou": spec.nms_iou,
            "max_per_image": spec.max_per_image, "topk": topk, "nms": nms, "pad_value": spec.pad_value,
        })
    return meta


def export_onnx(name: str, output: str | Path, *, checkpoint: str | Path | None = None, random_init: bool = False,
                opset: int = 17, batch: str | int = "dynamic", decode: bool = False, flip_test: bool = False,
                precision: str = "fp32", simplify: bool = True, topk: int = 1000, nms: bool = False,
                trust_checkpoint: bool = False, seed: int = 0, progress: bool = True, model=None) -> Path:
    """Export the registered model `name` to `output` (see module docstring). Returns the path.

    Weights: `checkpoint` (official .pth), or `random_init=True` (seeded; for tests and pipelines
    checks), or an already built `model` (then `checkpoint_sha256` is not recorded).
    """
    spec = get_spec(name)
    output = Path(output)
    if precision not in ("fp32", "fp16"):
        raise UsageError(f"precision must be fp32 or fp16, not {precision!r}")
    if batch != "dynamic":
        import operator

        if isinstance(batch, bool) or not hasattr(batch, "__index__") or operator.index(batch) < 1:
            raise UsageError(f"batch must be 'dynamic' or a positive integer, not {batch!r}")
        batch = operator.index(batch)
    if opset < 13:
        raise UsageError(f"opset {opset} is too old: TensorRT 10 and Q/DQ need opset >= 13")
    if model is None and checkpoint is None and not random_init:
        raise UsageError("give --checkpoint PATH (official weights) or --random-init")
    if spec.task == "pose3d" and flip_test:
        raise UsageError("flip test is not defined for RTMW3D (its official test config does not use it)")
    if not spec.is_pose and (decode or flip_test):
        raise UsageError("--decode and --flip-test apply to pose models; detectors always decode boxes")
    if spec.is_pose and nms:
        raise UsageError("--nms applies to detectors only")
    if topk < 1:
        raise UsageError(f"--topk must be at least 1, not {topk}")
    output = check_output(output, option="-o", inputs=[checkpoint])
    if checkpoint is not None and not Path(checkpoint).is_file():
        what = "is a folder, not a checkpoint file" if Path(checkpoint).is_dir() else "not found"
        raise CheckpointError(f"checkpoint {checkpoint} {what}")

    torch = require("torch", "export")
    import onnx

    steps = ["build", "weights", "trace", "simplify", "fp16", "metadata"]
    from .progress import progress_bar

    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"export {name}", total=len(steps))

        def step(label: str) -> None:
            bar.update(task, advance=1, description=f"export {name}: {label}")

        ckpt_sha = None
        if model is None:
            step("weights")
            model = build_weights(spec, checkpoint=checkpoint, seed=seed, trust_checkpoint=trust_checkpoint)
            if checkpoint is not None:
                ckpt_sha = sha256_file(Path(checkpoint))
            weights = {"from": "checkpoint" if checkpoint is not None else "random-init",
                       "seed": None if checkpoint is not None else int(seed)}
        else:
            step("weights")
            model = model.eval().float()
            weights = {"from": "model", "seed": None}
        weights["sha256"] = weights_sha256(model)
        step("trace")

        w, h = spec.input_size
        example_batch = 2 if batch == "dynamic" else batch
        example = torch.zeros(example_batch, 3, h, w)
        graph, outputs, k = export_graph(model, spec, decode=decode, flip_test=flip_test, topk=topk)
        dynamic_axes = None
        if batch == "dynamic":
            dynamic_axes = {"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}

        with tempfile.TemporaryDirectory() as tmp:
            raw_path = os.path.join(tmp, "raw.onnx")
            try:
                with torch.no_grad(), fp16_safe_scalenorm(), _quiet_export_warnings():
                    torch.onnx.export(graph.eval(), (example,), raw_path, input_names=["input"],
                                      output_names=outputs, dynamic_axes=dynamic_axes, opset_version=opset,
                                      do_constant_folding=True, dynamo=False)
            except Exception as exc:  # tracing errors are long; keep the first line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"ONNX export of {name} failed: {first[:200]}") from None
            proto = onnx.load(raw_path)
        step("simplify")
        if simplify:
            proto = simplify_graph(proto)
        if nms:
            _append_nms(proto, spec.nms_iou, spec.score_threshold)
        step("fp16")
        if precision == "fp16":
            proto = to_fp16(proto)
        step("metadata")
        write_metadata(proto, build_metadata(spec, outputs=outputs, batch=batch, decode=decode,
                                             flip_test=flip_test, precision=precision, checkpoint_sha256=ckpt_sha,
                                             topk=k, nms=nms, weights=weights))
        proto.producer_name, proto.producer_version = "rtmw-edge", __version__
        onnx.checker.check_model(proto)
        save_model_atomically(proto, output)
        bar.update(task, completed=len(steps))
    return output


def simplify_graph(proto):
    """Constant folding and shape-op cleanup with onnxslim (pure Python wheel, no onnxruntime pin)."""
    slim = require("onnxslim", "export")
    return slim.slim(proto)


@contextlib.contextmanager
def _quiet_export_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield

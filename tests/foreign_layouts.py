"""Foreign pose ONNX layouts made from the project's own exports (test helper, not part of the package).

No official pose weights are reachable here, so the mmdeploy / rtmlib / mmpose files are emulated from
random-weight exports of the same architectures, the way those tools lay them out:

- mmdeploy ``end2end.onnx`` + SDK folder: no rtmw_edge metadata, outputs ``simcc_x``/``simcc_y``, the batch
  axis dynamic, ``pipeline.json`` / ``deploy.json`` / ``detail.json`` beside it (their layout as written by
  mmdeploy's ``--dump-info``: rtmw_facts.md §5 "SDK pipeline"); the static SDK export names its outputs
  after torch's tensors (``output``, ``700``) and maps them in the Net task's ``output_map``;
- rtmlib zoo file: the same end2end.onnx, alone (rtmlib keeps the settings in its Python code);
- mmpose ``torch.onnx`` export: K declared symbolic (``simcc_x_dim_1``), no value_info, and — for the
  variant ``opaque_k`` — outputs behind a Reshape whose shape ONNX shape inference cannot follow, so
  only a run of the graph tells K;
- static batch 1 (mmdeploy's static configs): exported with batch 1.

`constant_simcc_onnx` makes no layout of a tool: a hand-made graph whose SimCC logits are constants chosen by the
test, so every keypoint (and RTMW3D depth) has an answer computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def foreign_copy(src: Path, dst: Path, *, symbolic_k: bool = False, opaque_k: bool = False,
                 rename: dict[str, str] | None = None) -> Path:
    """A copy of our export without rtmw_edge metadata, laid out like a foreign export."""
    model = onnx.load(str(src))
    del model.metadata_props[:]
    g = model.graph
    if opaque_k:  # y = Reshape(x, Max(Shape(x), 1)): the values are unchanged, the shape unknowable statically
        g.initializer.append(helper.make_tensor("opaque_one", TensorProto.INT64, [1], [1]))
        for out in g.output:
            raw = out.name + "_raw"
            for node in g.node:
                node.output[:] = [raw if n == out.name else n for n in node.output]
                node.input[:] = [raw if n == out.name else n for n in node.input]
            g.node.extend([helper.make_node("Shape", [raw], [raw + "_shape"]),
                           helper.make_node("Max", [raw + "_shape", "opaque_one"], [raw + "_shape1"]),
                           helper.make_node("Reshape", [raw, raw + "_shape1"], [out.name])])
    if symbolic_k or opaque_k:
        del g.value_info[:]
        for out in g.output:
            out.type.tensor_type.shape.dim[1].dim_param = f"{out.name}_dim_1"
    for old, new in (rename or {}).items():
        for node in g.node:
            node.output[:] = [new if n == old else n for n in node.output]
            node.input[:] = [new if n == old else n for n in node.input]
        for out in g.output:
            if out.name == old:
                out.name = new
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def write_sdk_json(folder: Path, *, input_size: tuple[int, int], mean, std, to_rgb: bool = True,
                   split_ratio: float = 2.0, sigma=(4.9, 5.66), output_map: dict[str, str] | None = None,
                   output_names: list[str] | None = None, net: str = "end2end.onnx", task: str = "PoseDetector",
                   config: str = "rtmw-m_simcc-cocktail14-256x192.py", padding: float = 1.25, use_dark: bool = False,
                   export_postprocess: bool = False, decoder_size: tuple[int, int] | None = None,
                   flip_indices: list[int] | None = None) -> Path:
    """pipeline.json, deploy.json and detail.json of an mmdeploy SDK pose folder."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = input_size
    params = {"flip_test": False, "type": "SimCCLabel", "input_size": list(decoder_size or input_size),
              "sigma": list(sigma), "simcc_split_ratio": split_ratio, "normalize": False, "use_dark": use_dark,
              "export_postprocess": export_postprocess}
    if flip_indices is not None:
        params["flip_indices"] = flip_indices
    pipeline = {"pipeline": {"input": ["img"], "output": ["post_output"], "tasks": [
        {"type": "Task", "module": "Transform", "name": "Preprocess", "input": ["img"], "output": ["prep_output"],
         "transforms": [{"type": "LoadImageFromFile"},
                        {"type": "TopDownGetBboxCenterScale", "padding": padding, "image_size": [w, h]},
                        {"type": "TopDownAffine", "image_size": [w, h]},
                        {"type": "Normalize", "mean": list(mean), "std": list(std), "to_rgb": to_rgb},
                        {"type": "ImageToTensor", "keys": ["img"]},
                        {"type": "Collect", "keys": ["img"], "meta_keys": ["img_shape", "center", "scale"]}]},
        {"name": "topdownposeestimator", "type": "Task", "module": "Net", "is_batched": True,
         "input": ["prep_output"], "output": ["infer_output"], "input_map": {"img": "input"},
         "output_map": output_map or {}},
        {"type": "Task", "module": "mmpose", "name": "postprocess", "component": "SimCCLabelDecode",
         "params": params, "output": ["post_output"], "input": ["prep_output", "infer_output"]}]}}
    deploy = {"version": "1.3.1", "task": task, "models": [
        {"name": "topdownposeestimator", "net": net, "weights": "", "backend": "onnxruntime", "precision": "FP32",
         "batch_size": 1, "dynamic_shape": True}], "customs": []}
    detail = {"version": "1.3.1", "codebase": {"task": "PoseDetection", "codebase": "mmpose", "version": "1.3.1",
                                               "pth": "model.pth", "config": config},
              "codebase_config": {"type": "mmpose", "task": "PoseDetection", "export_postprocess": export_postprocess},
              "onnx_config": {"type": "onnx", "export_params": True, "opset_version": 11, "save_file": net,
                              "input_names": ["input"], "output_names": output_names or ["simcc_x", "simcc_y"],
                              "input_shape": [w, h], "optimize": True}}
    for name, data in (("pipeline.json", pipeline), ("deploy.json", deploy), ("detail.json", detail)):
        (folder / name).write_text(json.dumps(data, indent=4))
    return folder


def constant_simcc_onnx(path, outputs: list[tuple[str, np.ndarray]], input_hw: tuple[int, int]) -> None:
    """An ONNX graph N×3×H×W → the given [1, K, bins] constants broadcast to [N, K, bins], in the order given
    (output 0 first). The batch is read from the input, so the pipeline's batching works as with a real model."""
    h, w = input_hw
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=1),   # [N,1,1,1]
             helper.make_node("Reshape", ["mean", "shape_n11"], ["mean_n11"]),                   # [N,1,1]
             helper.make_node("Mul", ["mean_n11", "zero"], ["zeros_n11"])]
    inits = [numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape_n11"),
             numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs:
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_const"))
        nodes.append(helper.make_node("Add", ["zeros_n11", f"{name}_const"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *value.shape[1:]]))
    graph = helper.make_graph(nodes, "constant_simcc",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, h, w])],
                              graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))

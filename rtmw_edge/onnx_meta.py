"""The metadata that makes an exported ONNX self-describing: one JSON value under one key.

Stored in `ModelProto.metadata_props` under `rtmw_edge` (so it survives copying the file alone and is
readable by any ONNX tool). The runtime reads preprocessing, keypoints and decode flags from here.
Schema (version 1): name, task (pose2d | pose3d | detector), input_name, input_size [w, h], batch
("dynamic" or an int), mean, std, color ("rgb" | "bgr": the channel order mean/std apply to), outputs
(names), decoded (bool: keypoints/scores instead of SimCC logits; boxes/scores for detectors),
flip_test, precision, keypoint_set, num_keypoints, keypoint_names, flip_indices, simcc_split_ratio,
simcc_sigma, z_range, root_z, focal, strides, score_threshold, nms_iou, max_per_image, topk, nms (bool),
pad_value, checkpoint_sha256, package_version, schema_version; `weights` (exports): {"from": "checkpoint" |
"random-init" | "model", "seed": the random-init seed or null, "sha256": `export.weights_sha256` of the traced
model}, what the torch-cuda engine rebuilds the model from.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RtmwEdgeError
from .outputs import atomic_path

METADATA_KEY = "rtmw_edge"
# what `calibrate` records in the INT8 copy of a foreign graph (one without project metadata): adding project
# metadata there would change how the graph is recognised, so its calibration info has a key of its own
CALIBRATION_KEY = "rtmw_edge_calibration"
SCHEMA_VERSION = 1


def write_metadata(model, meta: dict) -> None:
    """Set (or replace) the JSON metadata on an onnx.ModelProto in place."""
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps({"schema_version": SCHEMA_VERSION, **meta}, sort_keys=True)


def read_metadata(model_or_path) -> dict | None:
    """The project metadata of an ONNX model (proto or path), or None for a foreign graph."""
    if isinstance(model_or_path, (str, Path)):
        import onnx

        path = Path(model_or_path)
        if path.is_dir():
            raise RtmwEdgeError(f"{path} is a folder, not an ONNX file")
        if not path.is_file():
            raise RtmwEdgeError(f"ONNX file not found: {path}")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise RtmwEdgeError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
        if not model.graph.input and not model.graph.node:  # an empty file parses as an empty ModelProto
            raise RtmwEdgeError(f"{path} is not a readable ONNX model (empty: no graph)")
    else:
        model = model_or_path
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                raise RtmwEdgeError(f"the '{METADATA_KEY}' metadata of the model is not valid JSON") from None
    return None


def save_model_atomically(model, output: str | Path) -> Path:
    """Write an onnx.ModelProto under a temporary name and rename it: never a half-written model file."""
    import onnx

    with atomic_path(output) as tmp:
        onnx.save(model, str(tmp))
    return Path(output)

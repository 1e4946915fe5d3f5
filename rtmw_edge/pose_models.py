"""Bring-your-own pose ONNX: recognise a SimCC pose graph by its signature, and take its settings from
its own metadata, the mmdeploy SDK JSON beside it, or a registered model the user names — never guessed.

The pose twin of `detectors.py`. `inspect_pose` reads a graph and returns a `PoseSignature`: the input
(name, size from its static H/W, static or dynamic batch) and the SimCC outputs in role order x, y (, z),
with K and the bins from the declared shapes, else from an ONNX shape-inference pass, else from one dummy
run at batch 1 (official mmpose exports declare K symbolic because of the dynamic batch axis).

Recognised graphs (mmdeploy ``end2end.onnx``, rtmlib zoo files — the same mmdeploy exports — and
``torch.onnx`` exports made with mmpose; RTMW, RTMPose, DWPose, RTMW3D):
one float N×3×H×W input and two (2D) or three (RTMW3D) float outputs ``[B, K, bins]``, taken by the
names ``simcc_x``/``simcc_y``/``simcc_z`` when the graph uses them, else by the SDK's ``output_map``
(e.g. ``{"output": "simcc_x", "700": "simcc_y"}``), else in graph order; bins_x / W must equal bins_y / H
(the SimCC split ratio).

Settings (normalisation, colour order, SimCC split ratio, flip indices; RTMW3D depth codec), first match:

1. the ``rtmw_edge`` metadata in the graph (our exports, and copies made by `import_pose_model`);
2. ``pose_spec``: a registered pose model (``--pose-spec NAME``) whose settings apply — checked against
   the graph (input size, K, bins, 2D/3D), so a wrong name is refused, not run;
3. the mmdeploy SDK files beside the graph: ``pipeline.json`` (``Normalize`` mean/std/``to_rgb``,
   ``TopDownAffine`` size, ``TopDownGetBboxCenterScale`` padding, the ``SimCCLabelDecode`` params with
   ``simcc_split_ratio``/``input_size``/``use_dark``, the ``Net`` task's ``output_map``), ``deploy.json``
   (task ``PoseDetector``, the net file) and ``detail.json`` (``onnx_config.output_names``). Flip indices
   come from the JSON when it lists them, else from the keypoint set of K (17 → COCO, 133 →
   COCO-WholeBody: mmpose's only SimCC layouts of those sizes). The SDK has no depth settings, so an
   RTMW3D graph always needs ``pose_spec``.

Otherwise `PoseSettingsError` (a usage error, CLI exit 2) says in one line which of the two to give.
`pose_metadata` returns the settings in the schema of `onnx_meta`, so every later step (the pipeline,
`check`, `calibrate`, `build` manifests) reads one kind of description; `import_pose_model` writes a
copy of the graph with that metadata (outputs renamed to simcc_x/simcc_y/simcc_z), so later commands
need no hint. The input file is never modified.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .backends.onnxruntime import session_options
from .detectors import _FLOAT_TYPES, _load, _value_infos
from .downloads import sha256_file
from .engines import onnx_precision
from .errors import RtmwEdgeError, UsageError
from .export import POSE_OUTPUTS as SIMCC_ROLES  # the names our exports give the SimCC outputs
from .keypoints import KEYPOINT_SETS
from .onnx_meta import read_metadata, save_model_atomically, write_metadata
from .outputs import check_output
from .zoo import get_spec

log = logging.getLogger("rtmw_edge")

SDK_FILES = ("pipeline.json", "deploy.json", "detail.json")
KEYPOINT_SET_BY_COUNT = {17: "coco", 133: "coco-wholebody"}
SUPPORTED_PADDING = 1.25  # GetBBoxCenterScale default, what the pipeline crops with (geometry.BBOX_PADDING)


class UnknownPoseModelError(RtmwEdgeError):
    """An ONNX graph that is not a SimCC pose model this toolkit can run."""


class PoseSettingsError(UsageError):
    """A recognised pose graph whose preprocessing is not described anywhere: give --pose-spec or SDK JSON."""


@dataclass(frozen=True)
class PoseSignature:
    input_name: str
    input_size: tuple[int, int] | None   # (w, h); None when the graph's H/W are symbolic
    batch: int | None                    # static batch size, None = dynamic
    outputs: tuple[str, ...]             # graph output names in SimCC role order x, y (, z)
    num_keypoints: int | None            # None until resolved (shape inference / dummy run)
    bins: tuple[int | None, ...]         # per output

    @property
    def task(self) -> str:
        return "pose3d" if len(self.outputs) == 3 else "pose2d"

    @property
    def resolved(self) -> bool:
        return self.num_keypoints is not None and all(isinstance(b, int) for b in self.bins)


# --------------------------------------------------------------------------- graph signature
def _declared(outputs) -> tuple[int | None, tuple[int | None, ...]]:
    """K (if every output declares the same static K) and the static bins of each output."""
    ks = {o.shape[1] for o in outputs}
    k = ks.pop() if len(ks) == 1 else None
    return k, tuple(o.shape[2] for o in outputs)


def _order_outputs(outputs, role_names: dict[str, str] | None):
    """Outputs in role order x, y (, z): by our names, else by the SDK's output_map, else graph order."""
    by_name = {o.name: o for o in outputs}
    roles = SIMCC_ROLES[:len(outputs)]
    if set(roles) <= set(by_name):
        return [by_name[r] for r in roles]
    if role_names and all(role_names.get(r) in by_name for r in roles):
        return [by_name[role_names[r]] for r in roles]
    return list(outputs)


def inspect_pose(path_or_model, *, input_size: tuple[int, int] | None = None, session=None,
                 role_names: dict[str, str] | None = None, resolve: bool = True,
                 name: str | None = None) -> PoseSignature:
    """Recognise a SimCC pose graph (path or onnx.ModelProto); see the module docstring.

    `input_size` (w, h) is only used for the dummy run of a graph whose H/W are symbolic; `session` (an
    onnxruntime session of the same graph) saves building one for it; `role_names` maps roles to graph
    output names (the SDK's output_map); `resolve=False` skips shape inference and the dummy run.
    """
    model, where = _load(path_or_model, "pose")
    where = name or where
    initializers = {i.name for i in model.graph.initializer}
    inputs = _value_infos(model.graph.input, exclude=initializers)
    outputs = _value_infos(model.graph.output)
    described = (f"inputs [{'; '.join(t.describe() for t in inputs)}], outputs "
                 f"[{'; '.join(t.describe() for t in outputs)}]")
    images = [t for t in inputs if t.shape is not None and len(t.shape) == 4 and t.elem_type in _FLOAT_TYPES]
    if len(inputs) != 1 or len(images) != 1 or images[0].shape[1] not in (3, None):
        raise UnknownPoseModelError(f"{where}: not a pose model this toolkit runs (expected one float N×3×H×W "
                                    f"input): {described}")
    simcc = [o for o in outputs if o.elem_type in _FLOAT_TYPES and o.shape is not None and len(o.shape) == 3]
    if len(outputs) not in (2, 3) or len(simcc) != len(outputs):
        raise UnknownPoseModelError(f"{where}: not a pose model this toolkit runs (expected SimCC outputs simcc_x "
                                    f"[B,K,W·r], simcc_y [B,K,H·r] and, for RTMW3D, simcc_z): {described}")
    image = images[0]
    size = (image.shape[3], image.shape[2]) if image.shape[2] and image.shape[3] else None
    batch = image.shape[0]
    ordered = _order_outputs(simcc, role_names)
    k, bins = _declared(ordered)
    if resolve and (k is None or None in bins):
        k, bins = _inferred_shapes(model, [o.name for o in ordered])
    if resolve and (k is None or None in bins):
        run_size = size or input_size
        if run_size is None:
            raise UnknownPoseModelError(f"{where}: keypoints and bins are symbolic and so is the input size: "
                                        "cannot run the graph once to learn them")
        k, bins = _dummy_run_shapes(path_or_model, model, image.name, [o.name for o in ordered], batch or 1,
                                    run_size, session, where)
    return PoseSignature(input_name=image.name, input_size=size, batch=batch,
                         outputs=tuple(o.name for o in ordered), num_keypoints=k, bins=tuple(bins))


def _inferred_shapes(model, names: list[str]) -> tuple[int | None, tuple[int | None, ...]]:
    """K and bins from ONNX shape inference (with data propagation), None where it cannot tell."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference may fail on custom or unusual ops: the dummy run decides then
        return None, (None,) * len(names)
    infos = {v.name: v for v in _value_infos(list(inferred.graph.output) + list(inferred.graph.value_info))}
    outs = [infos.get(n) for n in names]
    if any(o is None or o.shape is None or len(o.shape) != 3 for o in outs):
        return None, (None,) * len(names)
    return _declared(outs)


def _dummy_run_shapes(path_or_model, model, input_name: str, names: list[str], batch: int,
                      size: tuple[int, int], session, where: str) -> tuple[int, tuple[int, ...]]:
    """Run the graph once on zeros and read K and bins off the outputs (symbolic in the graph)."""
    import numpy as np

    if session is None:
        import onnxruntime as ort

        source = str(path_or_model) if isinstance(path_or_model, (str, Path)) else model.SerializeToString()
        try:
            session = ort.InferenceSession(source, session_options(1), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RtmwEdgeError(f"{where}: ONNX Runtime cannot load the pose model: {first[:200]}") from None
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    x = np.zeros((batch, 3, size[1], size[0]), dtype)
    try:
        shapes = [o.shape for o in session.run(names, {input_name: x})]
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RtmwEdgeError(f"{where}: a test run at {size[0]}x{size[1]} to learn the keypoint count failed: "
                            f"{first[:200]}") from None
    ks = {s[1] for s in shapes}
    if len(ks) != 1 or any(len(s) != 3 for s in shapes):
        raise UnknownPoseModelError(f"{where}: SimCC outputs of different keypoint counts: {shapes}")
    return ks.pop(), tuple(int(s[2]) for s in shapes)


# --------------------------------------------------------------------------- mmdeploy SDK JSON
def sdk_files(folder: Path) -> dict[str, Path]:
    """The SDK JSON files present in `folder` (name → path)."""
    return {n: folder / n for n in SDK_FILES if (folder / n).is_file()}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RtmwEdgeError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise RtmwEdgeError(f"{path}: expected a JSON object")
    return data


def sdk_model_file(folder: str | Path) -> Path:
    """The ONNX graph of an mmdeploy SDK folder: deploy.json's net when it is an .onnx there, else
    end2end.onnx, else the folder's only .onnx."""
    folder = Path(folder)
    deploy = folder / "deploy.json"
    if deploy.is_file():
        for model in _read_json(deploy).get("models") or []:
            net = folder / str(model.get("net", ""))
            if net.suffix.lower() == ".onnx" and net.is_file():
                return net
    if (folder / "end2end.onnx").is_file():
        return folder / "end2end.onnx"
    found = sorted(folder.glob("*.onnx"))
    if len(found) == 1:
        return found[0]
    raise RtmwEdgeError(f"{folder}: a model folder needs end2end.onnx (or one .onnx) inside; found "
                        f"{', '.join(p.name for p in found) or 'none'}")


@dataclass(frozen=True)
class PoseSettings:
    """What the graph does not say about itself: preprocessing, codec, keypoint set (+ where it came from)."""

    source: str                          # "pose-spec" | "mmdeploy-sdk"
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color: str                           # channel order of mean/std: "rgb" | "bgr"
    split_ratio: float
    input_size: tuple[int, int] | None   # (w, h)
    keypoint_set: str | None = None
    flip_indices: tuple[int, ...] | None = None
    sigma: tuple[float, ...] = ()
    role_names: dict | None = None       # role → graph output name (SDK output_map / output_names)
    spec: object | None = None           # the zoo.ModelSpec of --pose-spec


def read_sdk_settings(folder: Path) -> PoseSettings | None:
    """Pose settings from an mmdeploy SDK folder's pipeline.json (+ deploy.json, detail.json); None when
    there is no pipeline.json. Anything the toolkit would run differently is refused in one line."""
    files = sdk_files(folder)
    if "pipeline.json" not in files:
        return None
    where = files["pipeline.json"]
    if "deploy.json" in files:
        task = _read_json(files["deploy.json"]).get("task")
        if task not in (None, "PoseDetector"):
            raise RtmwEdgeError(f"{files['deploy.json']}: task {task!r} is not a pose model's (PoseDetector)")
    detail = _read_json(files["detail.json"]) if "detail.json" in files else {}
    tasks = (_read_json(where).get("pipeline") or {}).get("tasks")
    if not isinstance(tasks, list):
        raise RtmwEdgeError(f"{where}: no pipeline.tasks list (not an mmdeploy SDK pipeline)")
    transforms = [t for task in tasks if isinstance(task, dict) for t in task.get("transforms") or []]
    norms = [t for t in transforms if t.get("type") == "Normalize"]
    if len(norms) != 1 or len(norms[0].get("mean", ())) != 3 or len(norms[0].get("std", ())) != 3:
        raise RtmwEdgeError(f"{where}: expected one Normalize transform with 3 means and 3 stds")
    norm = norms[0]
    decoders = [t for t in tasks if isinstance(t, dict) and t.get("module") == "mmpose"]
    if len(decoders) != 1 or decoders[0].get("component") != "SimCCLabelDecode":
        found = ", ".join(str(t.get("component")) for t in decoders) or "none"
        raise UnknownPoseModelError(f"{where}: the decoder is {found}, not SimCCLabelDecode: only SimCC models "
                                    "(RTMPose, RTMW, DWPose) run here")
    params = decoders[0].get("params") or {}
    if params.get("use_dark"):
        raise RtmwEdgeError(f"{where}: use_dark is on; this toolkit decodes SimCC by argmax (use_dark false, as "
                            "in every RTMPose/RTMW config)")
    if params.get("export_postprocess") or (detail.get("codebase_config") or {}).get("export_postprocess"):
        raise RtmwEdgeError(f"{where}: exported with export_postprocess (keypoints decoded in the graph); "
                            "export the raw SimCC outputs (mmdeploy's onnxruntime/tensorrt SimCC configs do)")
    sizes = {tuple(t["image_size"]) for t in transforms
             if t.get("type") in ("TopDownAffine", "TopDownGetBboxCenterScale") and t.get("image_size")}
    if params.get("input_size"):
        sizes.add(tuple(params["input_size"]))
    if len(sizes) > 1:
        raise RtmwEdgeError(f"{where}: the crop sizes disagree ({', '.join(f'{w}x{h}' for w, h in sizes)})")
    paddings = {float(t.get("padding", SUPPORTED_PADDING)) for t in transforms
                if t.get("type") == "TopDownGetBboxCenterScale"}
    if paddings - {SUPPORTED_PADDING}:
        raise RtmwEdgeError(f"{where}: box padding {sorted(paddings)} — the pipeline crops with padding "
                            f"{SUPPORTED_PADDING} (GetBBoxCenterScale's default, every RTMPose/RTMW config)")
    roles = {}
    for task in tasks:
        if isinstance(task, dict) and task.get("module") == "Net" and isinstance(task.get("output_map"), dict):
            roles = {role: graph for graph, role in task["output_map"].items() if role in SIMCC_ROLES}
    names = (detail.get("onnx_config") or {}).get("output_names")
    if not roles and isinstance(names, list) and len(names) in (2, 3):
        roles = dict(zip(SIMCC_ROLES, names))
    flips = params.get("flip_indices")
    config = ((detail.get("codebase") or {}).get("config") or "")
    name = Path(str(config)).stem or folder.resolve().name
    return PoseSettings(
        source="mmdeploy-sdk", name=name, mean=tuple(float(v) for v in norm["mean"]),
        std=tuple(float(v) for v in norm["std"]), color="rgb" if norm.get("to_rgb") else "bgr",
        split_ratio=float(params.get("simcc_split_ratio", 2.0)),
        input_size=tuple(int(v) for v in sizes.pop()) if sizes else None,
        flip_indices=tuple(int(i) for i in flips) if flips else None,
        sigma=tuple(float(s) for s in params.get("sigma") or ()), role_names=roles or None)


def spec_settings(name: str) -> PoseSettings:
    """Pose settings of a registered model (`--pose-spec NAME`)."""
    spec = get_spec(name)  # UnknownModelError lists close names
    if not spec.is_pose:
        raise UsageError(f"--pose-spec {name}: {name} is a detector; name a pose model (see `rtmw-edge models "
                         "list --task pose`)")
    return PoseSettings(source="pose-spec", name=spec.name, mean=spec.mean, std=spec.std, color=spec.color,
                        split_ratio=spec.simcc_split_ratio, input_size=spec.input_size,
                        keypoint_set=spec.keypoint_set, flip_indices=tuple(spec.flip_indices),
                        sigma=spec.simcc_sigma, spec=spec)


# --------------------------------------------------------------------------- settings → metadata
def missing_settings_error(where: str) -> PoseSettingsError:
    return PoseSettingsError(
        f"{where} is a pose ONNX without rtmw_edge metadata and without mmdeploy SDK JSON beside it: give "
        "--pose-spec NAME (the registered model it was exported from, e.g. rtmw-m-256x192; see `rtmw-edge "
        "models list --task pose`) or put the SDK's pipeline.json (and deploy.json) next to it")


def pose_metadata(path_or_model, pose_spec: str | None = None, *, session=None, name: str | None = None,
                  sdk_folder: Path | None = None) -> dict:
    """The pose graph's description in the `onnx_meta` schema: its own metadata, else built from the
    signature and `pose_spec` or the SDK JSON beside it (see the module docstring)."""
    model, where = _load(path_or_model, "pose")
    where = Path(name or where).name
    meta = read_metadata(model)
    if meta is not None:
        if meta.get("task") not in ("pose2d", "pose3d"):
            raise RtmwEdgeError(f"{where} is a {meta.get('task')} model ({meta.get('name')}), not a pose model: "
                                "check --det/--pose")
        if pose_spec and pose_spec != meta.get("name"):
            log.warning("%s describes itself as %s: --pose-spec %s is not used", where, meta.get("name"), pose_spec)
        return meta
    inspect_pose(model, resolve=False, name=where)  # not a pose graph at all: say so before asking for hints
    if pose_spec:
        settings = spec_settings(pose_spec)
    else:
        folder = sdk_folder or (Path(path_or_model).parent if isinstance(path_or_model, (str, Path)) else None)
        settings = read_sdk_settings(folder) if folder is not None else None
        if settings is None:
            raise missing_settings_error(where)
    sig = inspect_pose(path_or_model if isinstance(path_or_model, (str, Path)) else model,
                       input_size=settings.input_size, session=session, role_names=settings.role_names, name=where)
    return _metadata(model, sig, settings, where)


def _metadata(model, sig: PoseSignature, s: PoseSettings, where: str) -> dict:
    hint = f"--pose-spec {s.name}" if s.source == "pose-spec" else "the SDK's pipeline.json"
    # a --pose-spec that does not fit the graph is a usage error (exit 2, before any frame), as a missing one is;
    # SDK JSON that does not fit its own graph is a broken input (exit 1)
    mismatch = UsageError if s.source == "pose-spec" else RtmwEdgeError
    size = sig.input_size or s.input_size
    if size is None:
        raise RtmwEdgeError(f"{where}: the input size is symbolic and {hint} does not give one")
    if sig.input_size and s.input_size and tuple(sig.input_size) != tuple(s.input_size):
        raise mismatch(f"{where} takes {sig.input_size[0]}x{sig.input_size[1]} (w×h) crops, {hint} says "
                            f"{s.input_size[0]}x{s.input_size[1]}: not the same model")
    k = int(sig.num_keypoints)
    w, h = size
    expected = (round(w * s.split_ratio), round(h * s.split_ratio), round(w * s.split_ratio))[:len(sig.outputs)]
    if tuple(sig.bins) != expected:
        raise mismatch(f"{where}: SimCC bins {list(sig.bins)} do not fit {w}x{h} at split ratio "
                            f"{s.split_ratio:g} ({list(expected)} expected, from {hint})")
    spec = s.spec
    if spec is not None:
        if spec.task != sig.task:
            raise mismatch(f"{where} is a {sig.task} graph ({len(sig.outputs)} SimCC outputs), {hint} is a "
                                f"{spec.task} model")
        if spec.num_keypoints != k:
            raise mismatch(f"{where} has {k} keypoints, {hint} has {spec.num_keypoints}: not the same model")
    elif sig.task == "pose3d":
        raise PoseSettingsError(f"{where} is an RTMW3D graph (simcc_x, simcc_y, simcc_z); its depth settings are "
                                "not in the SDK JSON: give --pose-spec rtmw3d-l-384x288 or rtmw3d-x-384x288")
    kset = s.keypoint_set if spec is not None else KEYPOINT_SET_BY_COUNT.get(k)
    flips = list(s.flip_indices) if s.flip_indices else (KEYPOINT_SETS[kset].flip_indices if kset else [])
    if flips and (len(flips) != k or sorted(flips) != list(range(k))):
        raise RtmwEdgeError(f"{where}: flip indices of {hint} are not a permutation of the {k} keypoints")
    meta = {
        "name": s.name, "task": sig.task, "arch": spec.arch if spec is not None else None,
        "input_name": sig.input_name, "input_size": [int(w), int(h)],
        "batch": sig.batch if sig.batch else "dynamic", "mean": list(s.mean), "std": list(s.std), "color": s.color,
        "outputs": list(sig.outputs), "decoded": False, "flip_test": False, "precision": onnx_precision(model, None),
        "checkpoint_sha256": None, "package_version": __version__, "keypoint_set": kset, "num_keypoints": k,
        "keypoint_names": list(KEYPOINT_SETS[kset].names) if kset else [], "flip_indices": flips,
        "simcc_split_ratio": float(s.split_ratio), "simcc_sigma": list(s.sigma), "decode_visibility": False,
        "imported": {"from": s.source, "settings": s.name, "file": where},
    }
    if sig.task == "pose3d":
        meta.update({"z_range": spec.z_range, "root_z": spec.root_z, "focal": list(spec.focal)})
    return meta


# --------------------------------------------------------------------------- models import
def import_pose_model(source: str | Path, output: str | Path, pose_spec: str | None = None) -> dict:
    """Write a copy of a foreign pose graph with the toolkit's metadata (outputs renamed to simcc_x/y/z);
    the source is only read. Returns the metadata written."""
    import onnx

    source, output = Path(source), Path(output)
    if source.is_dir():
        if not sdk_files(source):
            raise RtmwEdgeError(f"{source} is a folder without mmdeploy SDK JSON: give a pose ONNX file or an "
                                "SDK folder")
        source = sdk_model_file(source)
    if not source.is_file():
        raise RtmwEdgeError(f"pose ONNX not found: {source}")
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"-o {output}: the copy must be an .onnx file")
    output = check_output(output, option="-o", inputs=[source])  # before any work; never the input itself
    existing = read_metadata(source)
    if existing is not None:
        raise UsageError(f"{source.name} already carries rtmw_edge metadata ({existing.get('name')}, "
                         f"{existing.get('task')}): it runs as it is, nothing to import")
    meta = pose_metadata(source, pose_spec)
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # protobuf DecodeError, missing external data
        raise RtmwEdgeError(f"{source} is not a readable ONNX model ({type(exc).__name__})") from None
    roles = list(SIMCC_ROLES[:len(meta["outputs"])])
    _rename_tensors(model, dict(zip(meta["outputs"], roles)))
    meta["outputs"] = roles
    meta["imported"]["sha256"] = sha256_file(source)
    write_metadata(model, meta)
    onnx.checker.check_model(model)
    save_model_atomically(model, output)
    return meta


def _rename_tensors(model, renames: dict[str, str]) -> None:
    """Rename graph tensors (outputs here) everywhere they occur; a target name already in use is refused."""
    renames = {a: b for a, b in renames.items() if a != b}
    if not renames:
        return
    g = model.graph
    used = {n for node in g.node for n in (*node.input, *node.output)} | {i.name for i in g.initializer}
    clash = (set(renames.values()) & used) - set(renames)
    if clash:
        raise RtmwEdgeError(f"cannot rename the outputs to {sorted(clash)}: the graph already uses those names")
    for node in g.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (*g.output, *g.value_info):
        value.name = renames.get(value.name, value.name)


def is_foreign_pose(path: str | Path) -> bool:
    """A pose graph without rtmw_edge metadata (mmdeploy / rtmlib / mmpose export)?"""
    if read_metadata(path) is not None:
        return False
    try:
        inspect_pose(path, resolve=False)
    except UnknownPoseModelError:
        return False
    return True


@contextlib.contextmanager
def described_model(path: str | Path, pose_spec: str | None = None) -> Iterator[Path]:
    """`path` itself, or — for a foreign pose graph — a temporary imported copy (`import_pose_model`) for
    the commands that read the metadata from the file (check, calibrate); removed afterwards."""
    path = Path(path)
    if path.suffix.lower() != ".onnx" or not path.is_file() or not is_foreign_pose(path):  # engines: manifests
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="rtmw-edge-import-") as tmp:
        copy = Path(tmp) / (path.stem + ".onnx")
        import_pose_model(path, copy, pose_spec)
        yield copy

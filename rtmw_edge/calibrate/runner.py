"""`calibrate(options)`: FP32 ONNX + images → INT8 Q/DQ ONNX + fidelity report. The CLI is a thin shell.

Steps: recognise the model (`data.describe_model`) → split calibration / held-out units → build or reuse
the cached calibration tensors → collect activation statistics (cached next to the shards) → choose the
float layers (defaults, --exclude, or --auto-exclude with the sensitivity frontier on validation samples)
→ insert Q/DQ → bias correction → check the graph (`validate_qdq`) → write atomically with metadata →
score FP32 vs INT8 on the held-out images → report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..detectors import UnknownDetectorError, inspect_detector
from ..downloads import home_dir, sha256_file
from ..errors import RtmwEdgeError, UsageError
from ..onnx_meta import CALIBRATION_KEY, METADATA_KEY, read_metadata, save_model_atomically, write_metadata
from ..outputs import atomic_path, atomic_write_text, check_output
from ..pipeline import PoseEstimator
from ..pose_models import described_model
from .data import (
    CalibrationCache,
    DataConfig,
    ModelInputs,
    Source,
    Unit,
    _units_images,
    build_calibration_set,
    describe_model,
    split_units,
)
from .fidelity import DetectorJudge, PoseJudge, Target
from .quantize import (
    Layer,
    bias_correct,
    collect_statistics,
    find_layers,
    int8_mac_share,
    match_layers,
    plan_placement,
    prepare_model,
    qdq_summary,
    quantize_qdq,
    shared_clips,
    validate_qdq,
)
from .ranges import METHODS, RangeCollector
from .report import evaluate_detector, evaluate_pose, write_report
from .sensitivity import SwitchableModel, frontier, layer_sensitivity

STATS_FILE = "statistics.npz"
SENSITIVITY_FILE = "sensitivity.json"
BIAS_SAMPLES = 128  # per-channel means settle long before this (samples spread over the whole set)

Progress = Callable[[str, int | None], Callable[[int], None]]


@dataclass
class CalibrateOptions:
    model: Path
    output: Path
    source: Source
    num: int = 512
    method: str = "percentile"
    percentile: float = 99.999
    det: Path | None = None
    det_threshold: float = 0.3
    exclude: list[str] = field(default_factory=list)
    auto_exclude: bool = False
    default_exclusions: bool = True
    residual: bool = True
    bias_correction: bool = True
    cache: Path | None = None
    report: Path | None = None
    seed: int = 0
    holdout: float = 0.2
    augment: bool = True
    val_num: int = 32
    target: Target = field(default_factory=Target)
    min_int8_share: float = 0.5
    threads: int | None = None
    pose_spec: str | None = None   # settings of a foreign pose ONNX (see rtmw_edge.pose_models)


@dataclass
class CalibrateResult:
    output: Path
    report: dict
    report_paths: tuple[Path, Path] | None
    cache_status: str


def default_cache(model: Path) -> Path:
    """$RTMW_EDGE_HOME/calibration/<model stem>: the cache is hundreds of MB (crops as float32 tensors), so it does
    not land in whatever folder the command runs in; `--cache` chooses another."""
    return home_dir() / "calibration" / Path(model).stem


def default_float_layers(model, layers: list[Layer], task: str) -> list[str]:
    """Convs kept in float unless told otherwise (measured on RTMDet-nano, docs/int8.md): the depthwise
    convs — a per-tensor activation scale serves every channel, but a depthwise output channel sees only
    its own input channel, so channels far below the tensor's range keep a handful of levels (7 % of the
    detector's MACs, most of its INT8 error). Pose models also keep the convs that feed the SimCC head
    (`final_layer`): their output goes straight into the float ScaleNorm/GAU/cls_x/cls_y head."""
    out = [layer.name for layer in layers if layer.depthwise]
    if task == "pose":
        out += [n for n in _convs_feeding_matmul(model, layers) if n not in out]
    return [layer.name for layer in layers if layer.name in set(out)]


def recognition_float_layers(model, layers: list[Layer], detector_kind: str | None) -> list[str]:
    """Convs that must stay float for `inspect_detector` to recognise the INT8 graph as the same kind: the
    mmdeploy end-to-end graphs are told apart by their stem (the input straight into a Conv: RTMDet; a
    Focus into a Conv with 4× the channels: YOLOX), and the stem check does not look through Q/DQ. So
    the first conv(s) after the image input keep float weights and a float input (a few % of the MACs)."""
    if detector_kind not in ("mmdeploy-e2e-rtmdet", "mmdeploy-e2e-yolox"):
        return []
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names = {layer.name for layer in layers}
    frontier = [i.name for i in model.graph.input]
    seen, hits = set(), []
    while frontier:
        t = frontier.pop()
        for node in consumers.get(t, []):
            if node.op_type == "Shape" or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "Conv":
                if node.name in names:
                    hits.append(node.name)
                continue
            frontier.extend(node.output)
    return [layer.name for layer in layers if layer.name in set(hits)]


def _convs_feeding_matmul(model, layers: list[Layer]) -> list[str]:
    """Convs whose output reaches a MatMul/Gemm without passing another conv (the SimCC head's input)."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names = {layer.name for layer in layers}
    hits = []
    for node in model.graph.node:
        if node.name not in names:
            continue
        stack, seen = list(node.output), set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for c in consumers.get(t, []):
                if c.op_type in ("MatMul", "Gemm"):
                    hits.append(node.name)
                    stack.clear()
                    break
                if c.op_type != "Conv":
                    stack.extend(c.output)
    return hits


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _null_progress(label: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


def calibrate(opts: CalibrateOptions, progress: Progress | None = None,
              log: Callable[[str], None] | None = None) -> CalibrateResult:
    """Calibrate and quantise `opts.model`. A foreign pose ONNX (no rtmw_edge metadata) is calibrated through
    an imported copy (`pose_models.import_pose_model`, settings from `opts.pose_spec` or its SDK JSON), so
    the INT8 graph comes out self-describing."""
    from dataclasses import replace

    model_path = Path(opts.model)
    _check_options(opts, model_path, Path(opts.output))
    with described_model(model_path, opts.pose_spec) as described:
        if described != model_path:
            opts = replace(opts, model=described, cache=opts.cache or default_cache(model_path))
        return _calibrate(opts, progress, log)


def _calibrate(opts: CalibrateOptions, progress: Progress | None = None,
               log: Callable[[str], None] | None = None) -> CalibrateResult:
    import onnx

    progress = progress or _null_progress
    say = log or (lambda msg: None)
    model_path, output = Path(opts.model), Path(opts.output)
    _check_options(opts, model_path, output)
    inputs = describe_model(model_path)
    if opts.det is not None:
        if inputs.task != "pose":
            raise UsageError("--det is for pose models (their crops come from its boxes); this is a detector")
        describe_det = describe_model(Path(opts.det))
        if describe_det.task != "detector":
            raise RtmwEdgeError(f"--det {opts.det}: not a person detector")

    fp32 = prepare_model(onnx.load(str(model_path)))
    layers = find_layers(fp32, (inputs.input_size[1], inputs.input_size[0]))
    if not layers:
        raise RtmwEdgeError(f"{model_path.name} has no conv layer with constant weights: nothing to quantise")
    user_float = match_layers(layers, opts.exclude) if opts.exclude else []
    required = [n for n in recognition_float_layers(fp32, layers, inputs.detector_kind) if n not in set(user_float)]
    user_float = [layer.name for layer in layers if layer.name in set(user_float) | set(required)]
    candidates = [layer.name for layer in layers if layer.name not in set(user_float)]
    full = plan_placement(fp32, layers, candidates, residual=opts.residual)

    cal_units, eval_units = split_units(opts.source, opts.holdout, opts.seed, opts.num)
    cache = CalibrationCache(opts.cache or default_cache(model_path))
    cfg = DataConfig(num=opts.num, seed=opts.seed, augment=opts.augment, holdout=opts.holdout,
                     det=Path(opts.det) if opts.det else None, det_threshold=opts.det_threshold)
    status = build_calibration_set(model_path, inputs, opts.source, cal_units, cfg, cache, progress=progress)
    manifest = cache.manifest() or {}
    say(f"calibration data: {status.action}{' (' + status.reason + ')' if status.reason else ''}, "
        f"{manifest.get('num_samples', 0)} samples in {cache.folder}")

    max_batch = 1 if inputs.task == "detector" else None  # the detector contract runs batch 1 only
    stats = _statistics(fp32, full.tensors, cache, manifest.get("key", ""), opts, progress, max_batch)
    amax = shared_clips(fp32, stats.amax(opts.method, opts.percentile))

    reasons = {"--exclude": [n for n in user_float if n not in set(required)], "detector stem": required,
               "default": [], "auto-exclude": []}
    sensitivity_rows, frontier_rows = None, None
    if opts.auto_exclude:
        float_layers, sensitivity_rows, frontier_rows = _auto_exclude(
            fp32, layers, candidates, user_float, full, amax, inputs, model_path, cache, manifest, opts, progress, say)
        reasons["auto-exclude"] = [n for n in float_layers if n not in set(user_float)]
    else:
        defaults = default_float_layers(fp32, layers, inputs.task) if opts.default_exclusions else []
        reasons["default"] = [n for n in defaults if n not in set(user_float)]
        float_layers = [layer.name for layer in layers if layer.name in set(user_float) | set(defaults)]
    int8_layers = [layer.name for layer in layers if layer.name not in set(float_layers)]
    if not int8_layers:
        raise RtmwEdgeError("every conv layer is excluded: nothing left to quantise")

    placement = plan_placement(fp32, layers, int8_layers, residual=opts.residual)
    qmodel = quantize_qdq(fp32, placement, amax)
    corrections = {}
    if opts.bias_correction:
        xb = _validation(cache, BIAS_SAMPLES)
        advance = progress("bias correction", len(xb))
        corrections = bias_correct(qmodel, fp32, int8_layers, (xb[i:i + 16] for i in range(0, len(xb), 16)),
                                   on_batch=advance, threads=opts.threads, max_batch=max_batch)
    problems = validate_qdq(qmodel, float_layers)
    if problems:  # a bug, not a user error: refuse to write a graph TensorRT would mis-build
        raise RtmwEdgeError(f"the Q/DQ graph is not well formed ({len(problems)} problem(s)): {problems[0]}")
    if inputs.task == "detector":  # the runtime must still recognise it as the same detector
        try:
            kind = inspect_detector(qmodel).kind
        except UnknownDetectorError as exc:
            kind = str(exc)
        if kind != inputs.detector_kind:
            raise RtmwEdgeError(f"the INT8 graph is no longer recognised as a {inputs.detector_kind} detector "
                                f"({kind[:120]}): not written")

    total_macs = sum(layer.macs for layer in layers)
    summary = qdq_summary(qmodel)
    quant_info = {
        "layers": len(layers), "int8_layers": len(int8_layers), "float_layers": float_layers,
        "float_reasons": {k: len(v) for k, v in reasons.items()},
        "int8_mac_share": int8_mac_share(layers, int8_layers), "total_macs": total_macs,
        "int8_macs": sum(layer.macs for layer in layers if layer.name in set(int8_layers)),
        "joins": len(placement.join_nodes), "residual": opts.residual, "bias_correction": opts.bias_correction,
        "bias_corrections_mean_abs": float(np.mean(list(corrections.values()))) if corrections else 0.0,
        "quantize_linear": summary["quantize_linear"], "dequantize_linear": summary["dequantize_linear"],
        "opset": summary["opset"], "activations": "int8 per-tensor symmetric",
        "weights": "int8 per-output-channel symmetric (axis 0)", "engine": "onnxruntime QDQ quantizer",
    }
    calib_info = {
        "method": opts.method, "percentile": opts.percentile, "samples": int(manifest.get("num_samples", 0)),
        "units": len(cal_units), "source": opts.source.kind, "seed": opts.seed, "data_key": manifest.get("key"),
        "cache": str(cache.folder), "cache_status": status.action, "cache_reason": status.reason,
        "augment": opts.augment, "detector": Path(opts.det).name if opts.det else None,
    }
    _write_model(qmodel, model_path, output, calib_info, quant_info, inputs)
    say(f"INT8 model: {output} ({len(int8_layers)}/{len(layers)} convs, "
        f"{100 * quant_info['int8_mac_share']:.1f} % of conv MACs in INT8)")

    fidelity = _held_out_fidelity(model_path, output, inputs, eval_units, opts, say)
    result = {
        "model": model_path.name, "output": str(output), "task": inputs.task, "package_version": __version__,
        "calibration": calib_info, "quantization": quant_info, "heldout": len(eval_units),
        "heldout_units": [u.id for u in eval_units], "fidelity": fidelity,
        "target": None if fidelity is None else {"description": opts.target.describe(inputs.task),
                                                 "met": bool(opts.target.met(inputs.task, fidelity))},
        "frontier": [s.to_dict() for s in frontier_rows] if frontier_rows else None,
        "sensitivity": sensitivity_rows,
    }

    paths = [write_report(cache.folder / "report.md", result)]
    if opts.report is not None:
        paths.append(write_report(Path(opts.report), result))
    return CalibrateResult(output, result, paths[-1], status.action)


def _check_options(opts: CalibrateOptions, model_path: Path, output: Path) -> None:
    """Option values and output paths, before any work (UsageError: the CLI exits 2)."""
    if opts.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, not {opts.method!r}")
    if not 0.0 < opts.percentile <= 100.0:
        raise UsageError("--percentile must be in (0, 100]")
    if opts.num < 1 or opts.val_num < 1:
        raise UsageError("--num and --val-num must be at least 1")
    if not 0.0 <= opts.holdout < 1.0:
        raise UsageError("--holdout must be in [0, 1)")
    if not 0.0 <= opts.det_threshold <= 1.0 or not 0.0 <= opts.min_int8_share <= 1.0:
        raise UsageError("--det-threshold and --min-int8-share must be in [0, 1]")
    if opts.threads is not None and opts.threads < 1:
        raise UsageError(f"--threads must be at least 1, not {opts.threads}")
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"-o must name an .onnx file, not {output.name}")
    src = opts.source
    inputs = [model_path, opts.det, src.images, src.coco, src.video, src.eval_images]
    check_output(output, option="-o", inputs=inputs)
    if opts.report is not None:
        md = Path(opts.report).with_suffix(".md")
        check_output(md, option="--report", inputs=inputs, others=[output])
        check_output(md.with_suffix(".json"), option="--report", inputs=inputs, others=[output])
    check_output(opts.cache or default_cache(model_path), option="--cache", inputs=inputs, kind="dir")
    if opts.det is not None and not Path(opts.det).is_file():
        raise RtmwEdgeError(f"--det: detector file not found: {opts.det}")


def _statistics(fp32, tensors: list[str], cache: CalibrationCache, data_key: str, opts: CalibrateOptions,
                progress: Progress, max_batch: int | None) -> RangeCollector:
    """Histograms of `tensors` over the calibration set, cached (keyed by data + tensor list)."""
    key = _hash({"data": data_key, "tensors": sorted(tensors), "version": 1})
    path = cache.folder / STATS_FILE
    meta_path = cache.folder / "statistics.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        if json.loads(meta_path.read_text())["key"] == key:
            return RangeCollector.load(path)
    advance = progress("activation statistics", len(cache))
    stats = collect_statistics(fp32, tensors, cache.batches(16), on_batch=advance, threads=opts.threads,
                               max_batch=max_batch)
    with atomic_path(path) as tmp:
        stats.save(tmp)
    atomic_write_text(meta_path, json.dumps({"key": key}))
    return stats


def _validation(cache: CalibrationCache, n: int) -> np.ndarray:
    """Up to `n` calibration samples spread over the whole set (every k-th), for sensitivity trials."""
    total = len(cache)
    step = max(1, total // n)
    picks = [cache.samples(1, i) for i in range(0, total, step)][:n]
    return np.concatenate(picks)


def _auto_exclude(fp32, layers, candidates, user_float, full, amax, inputs: ModelInputs, model_path: Path,
                  cache: CalibrationCache, manifest: dict, opts: CalibrateOptions, progress: Progress, say):
    x = _validation(cache, opts.val_num)
    switch = SwitchableModel(fp32, full, amax, threads=opts.threads,
                             max_batch=1 if inputs.task == "detector" else None)
    if inputs.task == "detector":
        judge = DetectorJudge(model_path)
    else:
        judge = PoseJudge(inputs.input_size, inputs.split_ratio or 2.0, inputs.keypoint_set, switch.output_names)
    reference = switch.run(x, [])
    key = _hash({"data": manifest.get("key"), "method": opts.method, "percentile": opts.percentile,
                 "residual": opts.residual, "candidates": candidates, "val": len(x), "version": 1})
    sens_path = cache.folder / SENSITIVITY_FILE
    sens = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(sens_path.read_text())
        if saved["key"] == key:
            sens = saved["sensitivity"]
    if sens is None:
        advance = progress("per-layer sensitivity", len(candidates))
        sens = layer_sensitivity(switch, x, reference, judge, candidates, "error", on_layer=lambda: advance(1))
        atomic_write_text(sens_path, json.dumps({"key": key, "sensitivity": sens}, indent=1))
    order = sorted(candidates, key=lambda n: -sens[n])
    joins_for = {}

    def meets(fid: dict) -> bool:
        return opts.target.met(inputs.task, fid)

    class _Joined:  # residual joins follow the INT8 layers: a join is on when all its inputs' blocks are
        def __init__(self) -> None:
            self.switch = switch

        def run(self, xx, enabled):
            key_ = tuple(sorted(enabled))
            if key_ not in joins_for:
                joins_for[key_] = plan_placement(fp32, layers, list(enabled), residual=opts.residual).join_nodes
            return switch.run(xx, list(enabled) + joins_for[key_])

    advance = progress("auto-exclude", None)
    steps = frontier(_Joined(), layers, x, reference, judge, order, list(user_float), [], meets=meets,
                     min_int8_share=opts.min_int8_share, on_step=lambda s: advance(1))
    chosen = steps[-1]
    if not meets(chosen.fidelity):
        chosen = min(steps, key=lambda s: (s.fidelity["error"], len(s.float_layers)))
        say(f"auto-exclude: the target ({opts.target.describe(inputs.task)}) was not reached on the validation "
            f"samples down to {100 * opts.min_int8_share:.0f} % INT8 MACs; keeping the step with the lowest error "
            f"({len(chosen.float_layers)} float convs, {100 * chosen.int8_mac_share:.1f} % INT8)")
    by_name = {layer.name: layer for layer in layers}
    rows = [[n, float(sens[n]), by_name[n].macs] for n in order]
    return [n for n in (layer.name for layer in layers) if n in set(chosen.float_layers)], rows, steps


def _write_model(qmodel, model_path: Path, output: Path, calib_info: dict, quant_info: dict,
                 inputs: ModelInputs) -> None:
    """Project metadata kept with precision "int8" + calibration info; a foreign graph gets the calibration
    info under its own key (adding project metadata would change how the graph is recognised)."""
    import onnx

    original = onnx.load(str(model_path), load_external_data=False)
    del qmodel.metadata_props[:]
    for prop in original.metadata_props:
        if prop.key != CALIBRATION_KEY:
            entry = qmodel.metadata_props.add()
            entry.key, entry.value = prop.key, prop.value
    info = {"calibration": calib_info, "quantization": {k: v for k, v in quant_info.items() if k != "float_layers"},
            "float_layers": quant_info["float_layers"], "source_model": model_path.name,
            "source_sha256": sha256_file(model_path)}
    if inputs.task == "detector":  # how the source was recognised and fed: `check` runs both the same way
        info["detector_signature"] = {"kind": inputs.detector_kind, "input_size": list(inputs.input_size)}
    meta = read_metadata(original)
    if meta is not None:
        meta = {k: v for k, v in meta.items() if k != "schema_version"}
        meta["precision"] = "int8"
        meta["int8"] = info
        write_metadata(qmodel, meta)
    else:
        entry = qmodel.metadata_props.add()
        entry.key, entry.value = CALIBRATION_KEY, json.dumps({"precision": "int8", **info}, sort_keys=True)
    qmodel.producer_name, qmodel.producer_version = "rtmw-edge", __version__
    onnx.checker.check_model(qmodel)
    save_model_atomically(qmodel, output)


def _held_out_fidelity(model_path: Path, output: Path, inputs: ModelInputs, eval_units: list[Unit],
                       opts: CalibrateOptions, say) -> dict | None:
    if not eval_units:
        say("no held-out images: fidelity not measured (use --holdout or --eval-images)")
        return None
    images = list(_load_units(eval_units, opts.source))
    if inputs.task == "detector":
        return evaluate_detector(model_path, output, images)
    det = None
    if opts.det is not None:
        det = PoseEstimator(opts.det, model_path, backend="onnxruntime", det_threshold=opts.det_threshold)
    units = []
    for unit, (name, image) in zip(eval_units, images):
        if det is not None:
            boxes, _, _ = det.detect(image)
        else:
            boxes = np.asarray(unit.boxes or [], np.float32).reshape(-1, 4)
        units.append((name, image, np.asarray(boxes, np.float32).reshape(-1, 4)))
    if not any(len(b) for _, _, b in units):
        say("no person in the held-out images: pose fidelity not measured")
        return None
    return evaluate_pose(model_path, output, units, inputs.keypoint_set)


def _load_units(units: list[Unit], source: Source):
    for i, image in _units_images(units, source.video):
        yield units[i].id, image


__all__ = ["CALIBRATION_KEY", "METADATA_KEY", "CalibrateOptions", "CalibrateResult", "calibrate",
           "default_cache", "default_float_layers"]

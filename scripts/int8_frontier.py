#!/usr/bin/env python3
"""INT8 placement / calibration search on the real RTMDet-nano person detector (ONNX Runtime CPU).

Calibration images: 000000000785, 000000040083, human-pose (the 785 skier crop) from ../shared/images,
with flips/crops/zooms (the calibration pipeline's augmentation). Held-out: 000000196141 and 000000197388
and five fixed variants of each (mirror, left/right 70 % crops, 0.6× / 1.5× scale) = 12 frames, scored
against FP32 (recall of FP32 detections at IoU ≥ 0.5 / 0.8, mean IoU, score shift). Selection never looks
at the held-out frames: the frontier order comes from per-layer sensitivity on validation samples drawn
from the calibration set; held-out numbers are only recorded.

Stages (--stages, each prints a table; everything also goes to OUT/frontier.json):
  ort       ONNX Runtime `quantize_static` as it comes (QDQ, symmetric, per-channel, its own calibrator:
            Q/DQ also on every conv output, INT32 biases) on the same 64 samples — the issue's starting point;
  grid      data size × method × residual Q/DQ × bias correction, for fixed placements
            (all INT8 / head + depthwise float / depthwise float);
  frontier  from "depthwise float", keep the most sensitive dense convs in float one at a time
            while ≥ --min-share of conv MACs stays INT8;
  seeds     the default recipe (depthwise float, percentile 99.999, residual Q/DQ, bias correction) with
            other sampling seeds, to see how much of the result is luck;
  equalize  an experiment not in the package: per-channel equalisation in front of every conv's Q
            (x·(1/s) → Q/DQ → conv with W·s, s = √(max|x_c| / max|W_c|), exact in float) so that one
            per-tensor scale serves channels of very different ranges — with it the depthwise convs can be
            INT8 too (all convs, seeds as above).

    python scripts/int8_frontier.py [--out calibration/frontier] [--nums 64,512] [--stages grid,frontier]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import onnx

from rtmw_edge.calibrate.data import CalibrationCache, DataConfig, Source, build_calibration_set, describe_model
from rtmw_edge.calibrate.fidelity import DetectorJudge
from rtmw_edge.calibrate.quantize import (
    bias_correct,
    collect_statistics,
    find_layers,
    int8_mac_share,
    plan_placement,
    prepare_model,
    quantize_qdq,
    shared_clips,
    validate_qdq,
)
from rtmw_edge.calibrate.report import evaluate_detector
from rtmw_edge.calibrate.runner import BIAS_SAMPLES, _validation
from rtmw_edge.calibrate.sensitivity import SwitchableModel, layer_sensitivity
from rtmw_edge.sources import read_image

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
CALIB = ["000000000785.jpg", "000000040083.jpg", "human-pose.jpg"]
HELD_OUT = ["000000196141.jpg", "000000197388.jpg"]
METHODS = [("max", 0.0), ("percentile", 99.9), ("percentile", 99.99), ("percentile", 99.999), ("entropy", 0.0)]


def is_head(name: str) -> bool:
    return name.startswith(("/model/cls_convs", "/model/reg_convs", "/model/rtm_"))


def fmt(f: dict) -> str:
    n = f["reference_detections"]
    return (f"{f['found_iou50']:2d}/{n} @0.5  {f['found_iou80']:2d}/{n} @0.8  mIoU {f['mean_iou']:.3f}  "
            f"shift {f['score_shift_mean']:+.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("calibration/frontier"))
    ap.add_argument("--nums", default="64,512", help="calibration set sizes for the grid")
    ap.add_argument("--frontier-num", type=int, default=512, help="calibration set size for the frontier")
    ap.add_argument("--method", default="percentile:99.999", help="method:percentile for the frontier")
    ap.add_argument("--residual", type=int, default=1, help="residual Q/DQ in the frontier (0/1)")
    ap.add_argument("--bias", type=int, default=1, help="bias correction in the frontier (0/1)")
    ap.add_argument("--min-share", type=float, default=0.70)
    ap.add_argument("--val-num", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="grid with one data size and without entropy/max")
    ap.add_argument("--stages", default="ort,grid,frontier,seeds,equalize")
    ap.add_argument("--seeds", default="1,2,3,4")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images_dir = args.out / "images"
    images_dir.mkdir(exist_ok=True)
    for name in CALIB:
        shutil.copy(SHARED / "images" / name, images_dir / name)
    held = [(n, read_image(SHARED / "images" / n)) for n in HELD_OUT]

    inputs = describe_model(MODEL)
    fp32 = prepare_model(onnx.load(str(MODEL)))
    layers = find_layers(fp32)
    names = [layer.name for layer in layers]
    dw = [layer.name for layer in layers if layer.depthwise]
    head = [n for n in names if is_head(n)]
    stages = set(args.stages.split(","))
    out_json = args.out / "frontier.json"
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results.update({"model": MODEL.name, "calibration_images": CALIB, "held_out": HELD_OUT})
    caches = {}

    def data(num: int, seed: int = 0):
        if (num, seed) not in caches:
            cache = CalibrationCache(args.out / f"data_{num}" if seed == 0 else args.out / f"data_{num}_s{seed}")
            units_source = Source(images=images_dir)
            from rtmw_edge.calibrate.data import split_units

            units, _ = split_units(units_source, 0.0, seed, num)
            build_calibration_set(MODEL, inputs, units_source, units, DataConfig(num=num, seed=seed), cache)
            full = plan_placement(fp32, layers, names, residual=True)
            t = time.time()
            stats = collect_statistics(fp32, full.tensors, cache.batches(16))
            print(f"[data] {num} samples (seed {seed}), statistics in {time.time() - t:.0f} s", flush=True)
            caches[(num, seed)] = (cache, stats)
        return caches[(num, seed)]

    def quantized(num, method, pct, float_layers, residual, bias, seed=0):
        cache, stats = data(num, seed)
        amax = shared_clips(fp32, stats.amax(method, pct))
        int8 = [n for n in names if n not in set(float_layers)]
        qm = quantize_qdq(fp32, plan_placement(fp32, layers, int8, residual=residual), amax)
        if bias:
            xb = _validation(cache, BIAS_SAMPLES)
            bias_correct(qm, fp32, int8, (xb[i:i + 16] for i in range(0, len(xb), 16)))
        problems = validate_qdq(qm, float_layers)
        assert not problems, problems[:3]
        return qm, int8_mac_share(layers, int8)

    placements = {"all INT8": [], "head+depthwise float": sorted(set(head + dw)), "depthwise float": dw}
    if "ort" in stages:
        results["ort_quantize_static"] = []
        print("\n== ONNX Runtime quantize_static, default QDQ placement ==", flush=True)
        cache, _ = data(64)
        for method in ("Percentile", "MinMax"):
            for label in ("all INT8", "head+depthwise float"):
                t = time.time()
                qpath = args.out / "ort_static.onnx"
                ort_static(MODEL, qpath, cache, method, placements[label])
                fid = evaluate_detector(MODEL, qpath, held)
                share = int8_mac_share(layers, [n for n in names if n not in set(placements[label])])
                results["ort_quantize_static"].append({"method": method, "placement": label, "int8_mac_share": share,
                                                       "fidelity": fid, "seconds": time.time() - t})
                print(f"quantize_static {method:10s} {label:21s} INT8 {100 * share:5.1f} %  {fmt(fid)}  "
                      f"({time.time() - t:.0f} s)", flush=True)
                _save(args.out, results)
    if "grid" in stages:
        results["grid"] = []
        nums = [int(v) for v in args.nums.split(",")]
        methods = METHODS if not args.quick else [m for m in METHODS if m[0] == "percentile"]
        if args.quick:
            nums = nums[-1:]
        print("\n== grid ==", flush=True)
        for num in nums:
            for method, pct in methods:
                for residual in (True, False):
                    for bias in (True, False):
                        for label, fl in placements.items():
                            qm, share = quantized(num, method, pct, fl, residual, bias)
                            fid = evaluate_detector(MODEL, qm, held)
                            row = {"num": num, "method": method, "percentile": pct, "residual": residual,
                                   "bias_correction": bias, "placement": label, "float_convs": len(fl),
                                   "int8_mac_share": share, "fidelity": fid}
                            results["grid"].append(row)
                            tag = f"{method}{'' if not pct else ' ' + format(pct, 'g')}"
                            print(f"N={num:3d} {tag:17s} res={int(residual)} bc={int(bias)} {label:21s} "
                                  f"INT8 {100 * share:5.1f} %  {fmt(fid)}", flush=True)
                            _save(args.out, results)

    if "seeds" in stages:
        results["seeds"] = []
        print("\n== default recipe, other sampling seeds ==", flush=True)
        for num in [int(v) for v in args.nums.split(",")]:
            for seed in [0] + [int(v) for v in args.seeds.split(",")]:
                qm, share = quantized(num, "percentile", 99.999, dw, True, True, seed)
                fid = evaluate_detector(MODEL, qm, held)
                results["seeds"].append({"num": num, "seed": seed, "int8_mac_share": share, "fidelity": fid})
                print(f"N={num:3d} seed {seed}  INT8 {100 * share:5.1f} %  {fmt(fid)}", flush=True)
                _save(args.out, results)
    if "equalize" in stages:
        results["equalize"] = []
        print("\n== per-channel equalisation (experiment), N=64 ==", flush=True)
        for label, fl in (("all INT8 + equalisation", []), ("depthwise float + equalisation", dw)):
            for seed in [0] + [int(v) for v in args.seeds.split(",")]:
                cache, _ = data(64, seed)
                int8 = [n for n in names if n not in set(fl)]
                eq = equalized(fp32, [la for la in layers if la.name in set(int8)], cache)
                eq_layers = find_layers(eq)
                stats = collect_statistics(eq, plan_placement(eq, eq_layers, names).tensors, cache.batches(16))
                qm = quantize_qdq(eq, plan_placement(eq, eq_layers, int8), shared_clips(eq, stats.amax("percentile",
                                                                                                        99.999)))
                xb = _validation(cache, BIAS_SAMPLES)
                bias_correct(qm, eq, int8, (xb[i:i + 16] for i in range(0, len(xb), 16)))
                assert not validate_qdq(qm, fl)
                fid = evaluate_detector(MODEL, qm, held)
                share = int8_mac_share(layers, int8)
                results["equalize"].append({"placement": label, "seed": seed, "int8_mac_share": share, "fidelity": fid})
                print(f"{label:31s} seed {seed}  INT8 {100 * share:5.1f} %  {fmt(fid)}", flush=True)
                _save(args.out, results)
    if "frontier" not in stages:
        return
    # ---- frontier
    results["frontier"] = []
    method, _, pct = args.method.partition(":")
    pct = float(pct or 0)
    cache, stats = data(args.frontier_num)
    amax = shared_clips(fp32, stats.amax(method, pct))
    dense = [n for n in names if n not in set(dw)]
    full = plan_placement(fp32, layers, names, residual=bool(args.residual))
    switch = SwitchableModel(fp32, full, amax)
    judge = DetectorJudge(MODEL)
    x = _validation(cache, args.val_num)
    ref = switch.run(x, [])
    t = time.time()
    sens = layer_sensitivity(switch, x, ref, judge, dense, "error")
    print(f"\n== frontier ({args.method}, residual {args.residual}, bias {args.bias}; sensitivity of {len(dense)} "
          f"dense convs on {len(x)} validation samples in {time.time() - t:.0f} s) ==", flush=True)
    order = sorted(dense, key=lambda n: -sens[n])
    results["sensitivity"] = [[n, sens[n], next(la.macs for la in layers if la.name == n)] for n in order]
    float_layers = list(dw)
    added = None
    while True:
        if int8_mac_share(layers, [n for n in names if n not in set(float_layers)]) < args.min_share - 1e-9:
            break
        qm, share = quantized(args.frontier_num, method, pct, float_layers, bool(args.residual), bool(args.bias))
        fid = evaluate_detector(MODEL, qm, held)
        int8 = [n for n in names if n not in set(float_layers)]
        plan = plan_placement(fp32, layers, int8, residual=bool(args.residual))
        val = judge(ref, switch.run(x, int8 + plan.join_nodes))
        results["frontier"].append({"float_convs": len(float_layers), "added": added, "int8_mac_share": share,
                                    "held_out": fid, "validation": val})
        print(f"{len(float_layers):3d} float  INT8 {100 * share:5.1f} %  held-out {fmt(fid)}   "
              f"validation r50 {val['recall_iou50']:.3f} mIoU {val['mean_iou']:.3f}  + {added or '-'}", flush=True)
        _save(args.out, results)
        if not order:
            break
        added = order.pop(0)
        float_layers.append(added)
    _save(args.out, results)


def equalized(model, layers, cache: CalibrationCache):
    """The float model with x → x·(1/s_c) in front of each given conv and its weight's input channels ×s_c."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from rtmw_edge.calibrate.quantize import toposort

    tensors = sorted({la.activation for la in layers})
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for t in tensors:
        probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    cmax = {}
    for batch in cache.batches(16):
        for i in range(len(batch)):
            for t, v in zip(tensors, sess.run(tensors, {name: batch[i:i + 1]})):
                m = np.abs(v).max(axis=(0, 2, 3))
                cmax[t] = m if t not in cmax else np.maximum(cmax[t], m)
    out = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = {n.name: n for n in out.graph.node}
    inits = {i.name: i for i in out.graph.initializer}
    for la in layers:
        node = nodes[la.name]
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        per_in = np.abs(w).reshape(w.shape[0], -1).max(1) if la.depthwise else \
            np.abs(w).transpose(1, 0, 2, 3).reshape(w.shape[1], -1).max(1)
        s = np.sqrt(np.maximum(cmax[la.activation], 1e-6) / np.maximum(per_in, 1e-6))
        s = s / np.exp(np.mean(np.log(s)))
        out.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32).reshape(1, -1, 1, 1),
                                                             f"{la.name}_eq_inv"))
        out.graph.node.append(helper.make_node("Mul", [node.input[0], f"{la.name}_eq_inv"], [f"{la.name}_eq_x"],
                                               name=f"{la.name}_eq"))
        node.input[0] = f"{la.name}_eq_x"
        w2 = w * (s.reshape(-1, 1, 1, 1) if la.depthwise else s.reshape(1, -1, 1, 1))
        out.graph.initializer.append(numpy_helper.from_array(w2.astype(np.float32), f"{la.name}_eq_w"))
        node.input[1] = f"{la.name}_eq_w"
    used = {i for n in out.graph.node for i in n.input}
    for init in [i for i in out.graph.initializer if i.name not in used]:
        out.graph.initializer.remove(init)
    toposort(out.graph)
    return prepare_model(out)


def ort_static(model: Path, output: Path, cache: CalibrationCache, method: str, exclude: list[str]) -> None:
    """ONNX Runtime's quantize_static as documented for QDQ INT8 (symmetric, per-channel), fed the cached
    calibration tensors; its own placement (inputs and outputs of every conv, INT32 biases)."""
    import tempfile

    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = (b[i:i + 1] for b in cache.batches(16) for i in range(len(b)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": x}

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "m13.onnx"
        onnx.save(version_converter.convert_version(onnx.load(str(model)), 13), str(src))
        quantize_static(str(src), str(output), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def _save(out: Path, results: dict) -> None:
    (out / "frontier.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

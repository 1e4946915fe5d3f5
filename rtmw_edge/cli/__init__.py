"""The `rtmw-edge` command line: parse, call the API, print. No logic of its own.

Every `RtmwEdgeError` becomes one line on stderr and exit code 1; usage errors exit 2 (typer, and
`errors.UsageError`).
"""

from __future__ import annotations

import os
import sys

from .. import signals

if os.path.basename(sys.argv[0] if sys.argv else "") == "rtmw-edge" or \
        list(getattr(sys, "orig_argv", [])[1:3]) == ["-m", "rtmw_edge.cli"]:
    # the process is the command line: from here on a SIGTERM / Ctrl-C during the imports below is a flag that
    # main() acts on (an exit code, never a traceback from inside an import)
    signals.install()

import contextlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from .. import __version__, export, native_stderr  # noqa: E402
from ..backends import backend_names, backends_of  # noqa: E402
from ..downloads import checkpoints_dir, fetch
from ..errors import (
    ReaderGone,
    RtmwEdgeError,  # noqa: E402
    Terminated,
    UsageError,
)
from ..evaluate import METRICS, evaluate_predictions, run_eval
from ..outputs import atomic_output, check_output
from ..zoo import (
    POSE_SPEC_HELP,  # noqa: E402
    get_spec,
    list_models,
)

app = typer.Typer(help="Real-time whole-body pose estimation (RTMW / RTMW3D / RTMPose) on NVIDIA edge devices.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="The model zoo: list, inspect and download official checkpoints.", no_args_is_help=True)
app.add_typer(models_app, name="models")

out = Console(width=max(Console().width, 110))  # keep tables readable when piped
# a foreign pose ONNX (mmdeploy / rtmlib / mmpose export, no rtmw_edge metadata, no SDK JSON beside it)
POSE_SPEC_OPTION = typer.Option(None, "--pose-spec", help=POSE_SPEC_HELP)
# the --backend names, from the one backend table (rtmw_edge/backends/__init__.py), by the pipeline they mean
LOCAL_BACKEND_NAMES = tuple(b for b in backend_names() if b not in backends_of("remote"))
BACKEND_PIPELINES = (f"{', '.join(backends_of('cpu'))} (the CPU pipeline), {', '.join(backends_of('cuda-stream'))} "
                     "(the CUDA-stream pipeline), auto (the CUDA-stream pipeline when a GPU and TensorRT engines "
                     "are there, else the CPU one)")

EXIT_VERDICT = 3  # a command's own verdict (check past its tolerances), as calibrate's missed target


def _version(value: bool) -> None:
    if value:
        out.print(f"rtmw-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


TASKS = ("pose2d", "pose3d", "detector", "pose")
_AP_LABEL = {"wholebody_ap": "whole-body", "coco_ap": "COCO body", "person_ap": "person"}


def _headline_ap(spec) -> str:
    for key in ("wholebody_ap", "coco_ap", "person_ap"):
        if key in spec.metrics:
            return f"{spec.metrics[key]:.3f} {_AP_LABEL[key]}"
    return "-"


@models_app.command("list")
def models_list(task: str | None = typer.Option(None, help="Only pose2d, pose3d, detector or pose."),
                as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Table of registered models: task, keypoints, input size, parameters, published AP."""
    if task is not None and task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    specs = [get_spec(n) for n in list_models(task)]
    if as_json:
        out.print_json(json.dumps([{"name": s.name, "task": s.task, "keypoints": s.num_keypoints,
                                    "input_size": list(s.input_size), "params": s.params,
                                    "metrics": s.metrics} for s in specs]))
        return
    table = Table(title="rtmw-edge models (AP: published, COCO-WholeBody / COCO val)")
    for col in ("name", "task", "keypoints", "input (w×h)", "params", "GFLOPs", "AP"):
        table.add_column(col, justify="right" if col in ("keypoints", "params", "GFLOPs") else "left", no_wrap=True)
    for s in specs:
        table.add_row(s.name, s.task, str(s.num_keypoints or "-"), f"{s.input_size[0]}×{s.input_size[1]}",
                      f"{s.params / 1e6:.2f}M", f"{s.gflops:g}" if s.gflops else "-", _headline_ap(s))
    out.print(table)


@models_app.command("info")
def models_info(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Everything the registry knows about one model (JSON)."""
    spec = get_spec(name)
    info = spec.as_dict()
    info.pop("keypoint_names", None)
    path = checkpoints_dir() / spec.checkpoint_filename
    info["checkpoint_cached"] = str(path) if path.exists() else None
    out.print_json(json.dumps(info))


@models_app.command("download")
def models_download(name: str = typer.Argument(..., help="Registered model name."),
                    sha256: str | None = typer.Option(None, help="Pin the file's full sha256."),
                    directory: Path | None = typer.Option(None, "--dir", help="Where to keep it "
                                                             "(default: $RTMW_EDGE_HOME/checkpoints).")) -> None:
    """Download the official checkpoint (resumable, hash-checked) into the cache."""
    spec = get_spec(name)
    folder = check_output(directory or checkpoints_dir(), option="--dir", kind="dir")
    path = fetch(spec.checkpoint_url, directory=folder, sha256=sha256, hash_prefix=spec.hash_prefix)
    out.print(f"{name}: {path}")


@models_app.command("import")
def models_import(source: Path = typer.Argument(..., help="Foreign pose ONNX (mmdeploy end2end.onnx, rtmlib zoo "
                                                "file, mmpose torch.onnx export) or an mmdeploy SDK folder."),
                  output: Path = typer.Option(..., "-o", "--output", help="The copy to write (.onnx)."),
                  spec: str | None = typer.Option(None, "--spec", "--pose-spec", help="The registered model whose "
                                                  "settings apply (not needed with the SDK's pipeline.json beside "
                                                  "the file).")) -> None:
    """Write a copy of a foreign pose ONNX with the toolkit's metadata, so later commands need no hint.

    The input is only read. Settings come from --spec or the mmdeploy SDK JSON beside the file, and are
    checked against the graph (input size, keypoints, SimCC bins)."""
    from ..pose_models import import_pose_model

    meta = import_pose_model(source, output, spec)
    how = f"--spec {meta['name']}" if meta["imported"]["from"] == "pose-spec" else "the SDK's pipeline.json"
    w, h = meta["input_size"]
    out.print(f"{source} → {output}: {meta['task']}, {meta['num_keypoints']} keypoints, {w}x{h} crops, batch "
              f"{meta['batch']}; settings from {how}", highlight=False, markup=False)


@app.command("export")
def export_cmd(name: str = typer.Argument(..., help="Registered model name (see `models list`)."),
               output: Path = typer.Option(..., "-o", "--output", help="Output .onnx file."),
               checkpoint: Path | None = typer.Option(None, help="Official .pth checkpoint."),
               random_init: bool = typer.Option(False, "--random-init", help="Seeded random weights (tests)."),
               opset: int = typer.Option(17, help="ONNX opset (>= 13)."),
               batch: str = typer.Option("dynamic", help="'dynamic' or a fixed batch size."),
               decode: bool = typer.Option(False, "--decode", help="Pose: SimCC decode in the graph."),
               flip_test: bool = typer.Option(False, "--flip-test", help="Pose: flip test in the graph."),
               precision: str = typer.Option("fp32", help="fp32 or fp16 (FP16 trunk, FP32 I/O and head)."),
               no_simplify: bool = typer.Option(False, "--no-simplify", help="Skip onnxslim."),
               topk: int = typer.Option(1000, help="Detector: fixed number of candidate boxes."),
               nms: bool = typer.Option(False, "--nms", help="Detector: add ONNX NonMaxSuppression (ORT use)."),
               trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint",
                                                     help="Allow any pickled object in it.")) -> None:
    """Export a registered model to a self-describing ONNX graph for ONNX Runtime and TensorRT."""
    if batch != "dynamic":
        if not batch.isdigit():
            raise UsageError(f"--batch must be 'dynamic' or a positive integer, not {batch!r}")
        batch = int(batch)
    path = export.export_onnx(name, output, checkpoint=checkpoint, random_init=random_init, opset=opset, batch=batch,
                       decode=decode, flip_test=flip_test, precision=precision, simplify=not no_simplify,
                       topk=topk, nms=nms, trust_checkpoint=trust_checkpoint)
    out.print(f"{name} → {path}")


@app.command("check")
def check_cmd(candidate: Path = typer.Argument(..., help="The converted model (.onnx from `export`, or an .engine "
                                                "from `build`)."),
              against: str = typer.Option(..., "--against", help="Reference: another .onnx, an official "
                                          "checkpoint .pth, or a registered model name."),
              images: Path = typer.Option(..., "--images", help="A photo or a folder of photos to run on."),
              max_samples: int = typer.Option(16, help="Use at most this many photos."),
              max_rel: float = typer.Option(1e-2, help="Max relative difference per output."),
              max_px: float = typer.Option(1.0, help="Pose: max p95 keypoint displacement (crop pixels)."),
              min_oks: float = typer.Option(0.95, help="Pose: min mean OKS against the reference."),
              min_recall: float = typer.Option(1.0, help="Detector: min recall of reference detections."),
              min_iou: float = typer.Option(0.85, help="Detector: min mean IoU of the recovered detections."),
              json_out: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
              trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint"),
              pose_spec: str | None = POSE_SPEC_OPTION) -> None:
    """Compare a converted model with its reference on real photos; exit 3 past the tolerances (a verdict)."""
    from ..check import Tolerances, check_model

    if max_samples < 1:
        raise UsageError(f"--max-samples must be at least 1, not {max_samples}")
    if not all(0.0 <= v <= 1.0 for v in (min_oks, min_recall, min_iou)) or max_rel < 0 or max_px < 0:
        raise UsageError("--min-oks/--min-recall/--min-iou must be in [0, 1], --max-rel/--max-px >= 0")
    json_out = check_output(json_out, option="--json", inputs=[candidate, against, images])
    report = check_model(candidate, against, images, max_samples=max_samples, trust_checkpoint=trust_checkpoint,
                         tolerances=Tolerances(max_rel, max_px, min_oks, min_recall, min_iou),
                         pose_spec=pose_spec)
    table = Table(title=f"check {report.candidate} against {report.reference} ({report.samples} samples)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, d in report.outputs.items():
        table.add_row(f"{name} max abs / rel", f"{d['max_abs']:.3g} / {d['max_rel']:.3g}")
    for key, value in {**report.keypoints, **report.detections}.items():
        table.add_row(key, f"{value:.4g}")
    for part, d in report.parts.items():
        table.add_row(f"{part}: mean px / OKS", f"{d['mean_px']:.3g} / {d['oks']:.4f}")
    out.print(table)
    if json_out is not None:
        with atomic_output(json_out) as f:
            json.dump(report.to_dict(), f, indent=2)
    if not report.passed:
        for failure in report.failures:
            out.print(f"[red]FAIL[/red] {failure}")
        if report.int8 and report.task != "detector" and (max_px, min_oks) == (1.0, 0.95):
            out.print("note: these are the defaults for lossless conversions (FP16, engines); an INT8 pose model is "
                      "judged as `calibrate` judges it: --min-oks 0.9 (its default target) and a --max-px you accept "
                      "for your use (INT8 moves keypoints by a few crop pixels, e.g. --max-px 4); see docs/int8.md",
                      highlight=False, markup=False)
        raise typer.Exit(EXIT_VERDICT)
    out.print("[green]PASS[/green]")


@app.command("run")
def run_cmd(source: str = typer.Argument(..., help="Image, folder, video, camera index, RTSP/HTTP URL or image URL."),
            det: str = typer.Option("rtmdet-nano-person", "--det", help="Detector: .onnx or registered name."),
            pose: str = typer.Option("rtmw-m-256x192", "--pose", help="Pose model: .onnx, mmdeploy SDK folder or "
                                     "registered name."),
            pose_spec: str | None = POSE_SPEC_OPTION,
            det_interval: int = typer.Option(1, "--det-interval", min=1, help="Video/camera: run the detector "
                                             "every N-th frame; in between, boxes from the last frame's keypoints."),
            backend: str = typer.Option("auto", help=f"{BACKEND_PIPELINES}, or triton (a Triton server: "
                                        "--triton-url)."),
            triton_url: str | None = typer.Option(None, "--triton-url", help="Triton server HOST:PORT (gRPC; "
                                                  "http://HOST:PORT for HTTP); implies --backend triton."),
            triton_model: str = typer.Option("rtmw_pipeline", "--triton-model", help="The server's pipeline model."),
            out_jsonl: str | None = typer.Option(None, "--out", help="JSON lines, one object per frame, written "
                                                 "as they come ('-': standard output)."),
            coco: Path | None = typer.Option(None, "--coco", help="COCO keypoint results JSON (image ids from --ann "
                                             "or from COCO-style file names)."),
            ann: Path | None = typer.Option(None, "--ann", help="COCO annotation whose file names give --coco its "
                                            "image ids."),
            save: Path | None = typer.Option(None, "--save", help="Annotated output: .jpg/.png (one image), "
                                             ".mp4/.avi (video) or a folder (one image per frame)."),
            plot_3d: Path | None = typer.Option(None, "--plot-3d", help="RTMW3D: 3D skeleton PNG of the last frame."),
            show: bool = typer.Option(False, "--show", help="Show frames in a window (needs a GUI OpenCV)."),
            flip_test: bool = typer.Option(False, "--flip-test", help="Average with the mirrored crop."),
            track: bool = typer.Option(False, "--track", help="Stable track ids across frames."),
            smooth: bool = typer.Option(False, "--smooth", help="One-Euro keypoint smoothing (implies --track)."),
            smooth_min_cutoff: float | None = typer.Option(None, help="One-Euro min cutoff (Hz, > 0)."),
            smooth_beta: float | None = typer.Option(None, help="One-Euro speed coefficient (>= 0)."),
            max_persons: int = typer.Option(32, "--max-persons", help="Keep at most this many (highest scores)."),
            det_threshold: float = typer.Option(0.3, "--det-threshold", help="Detector score threshold."),
            kpt_threshold: float = typer.Option(0.3, "--kpt-threshold", help="Keypoint score threshold for drawing."),
            focal: str | None = typer.Option(None, help="RTMW3D camera focal length 'fx,fy' in pixels."),
            principal: str | None = typer.Option(None, help="RTMW3D principal point 'cx,cy' (default: centre)."),
            threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads (default: all cores)."),
            loop: bool = typer.Option(False, "--loop", help="Restart a video file at its end."),
            strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable image or frame "
                                        "(default: skip it with a warning, exit 1 at the end).")) -> None:
    """Detect people and estimate their keypoints (2D, or 3D with RTMW3D) on images, videos and cameras.

    Progress, warnings and the summary go to standard error; standard output carries only `--out -`."""
    from ..run import RunOptions, run_source

    opts = RunOptions(source=source, det=det, pose=pose, backend=backend, triton_url=triton_url,
                      triton_model=triton_model, out_jsonl=None if out_jsonl is None else Path(out_jsonl), coco=coco,
                      ann=ann, save=save,
                      plot_3d=plot_3d, show=show, flip_test=flip_test, track=track, smooth=smooth,
                      smooth_min_cutoff=smooth_min_cutoff, smooth_beta=smooth_beta, max_persons=max_persons,
                      det_threshold=det_threshold, kpt_threshold=kpt_threshold, focal=focal, principal=principal,
                      threads=threads, loop=loop, strict=strict, pose_spec=pose_spec,
                      det_interval=det_interval)
    log = Console(stderr=True)
    with native_stderr.captured(lambda text: log.print(text, highlight=False, markup=False, soft_wrap=True)):
        summary = run_source(opts, console=log)  # FFmpeg's / OpenCV's own lines: a few, then a count
    log.print(str(summary), highlight=False, markup=False, soft_wrap=True)
    if summary.interrupted is not None:
        raise summary.interrupted
    if summary.skipped:
        raise RtmwEdgeError(f"{summary.skipped} unreadable {summary.skipped_kind}(s) skipped (warnings above); the "
                            "outputs hold the others (--strict stops at the first one)")


@app.command("eval")
def eval_cmd(ann: Path = typer.Option(..., "--ann", help="COCO / COCO-WholeBody keypoint annotation JSON."),
             images: Path | None = typer.Option(None, "--images", help="Folder with the annotation's images."),
             pose: str | None = typer.Option(None, "--pose", help="Pose model: .onnx, SDK folder or registered name."),
             pose_spec: str | None = POSE_SPEC_OPTION,
             det: str | None = typer.Option(None, "--det", help="Detector: .onnx or registered name."),
             gt_boxes: bool = typer.Option(False, "--gt-boxes", help="Ground-truth person boxes, no detector."),
             backend: str = typer.Option("auto", help=f"{BACKEND_PIPELINES}."),
             flip_test: bool = typer.Option(False, "--flip-test", help="Average with the mirrored crop."),
             predictions: Path | None = typer.Option(None, "--predictions", help="Score this COCO keypoint results "
                                                     "JSON instead of running models."),
             out_json: Path | None = typer.Option(None, "--out", help="Write the metrics as JSON.")) -> None:
    """Keypoint AP/AR (pycocotools) per body part and whole body on COCO-WholeBody (or body on COCO).

    Which pipeline runs: with --det, the one --backend means, as in `run` — onnxruntime: the CPU pipeline;
    tensorrt, torch-cuda, onnxruntime-gpu: the CUDA-stream pipeline; auto: the CUDA-stream pipeline when a GPU
    and TensorRT engines are there, else the CPU one. With --gt-boxes: the CPU pipeline's pose stage (crops,
    pose model, SimCC decode) on the backend's host engine, the only one that takes boxes from outside."""
    out_json = check_output(out_json, option="--out", inputs=[ann, images, pose, det, predictions])
    if predictions is not None:
        extra = [flag for flag, given in (("--pose", pose), ("--det", det), ("--gt-boxes", gt_boxes),
                                          ("--images", images), ("--flip-test", flip_test)) if given]
        if extra:
            raise UsageError(f"--predictions scores an existing results file; drop {', '.join(extra)}")
        metrics = evaluate_predictions(ann, predictions)
        title = f"{predictions.name} on {ann.name}"
    else:
        if pose is None or images is None:
            raise UsageError("eval needs --pose and --images to run models (or --predictions to score a file)")
        if gt_boxes == (det is not None):
            raise UsageError("eval needs exactly one of --det DETECTOR or --gt-boxes")
        if backend not in LOCAL_BACKEND_NAMES:
            raise UsageError(f"--backend must be one of {', '.join(LOCAL_BACKEND_NAMES)}, not {backend!r} (eval runs "
                             "the models here)")
        metrics, _ = run_eval(ann, images, pose, det=det, gt_boxes=gt_boxes, backend=backend, flip_test=flip_test,
                              pose_spec=pose_spec)
        title = f"{Path(pose).name} ({'GT boxes' if gt_boxes else Path(det).name}) on {ann.name}"
    table = Table(title=title)
    table.add_column("part")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    for part, values in metrics.items():
        table.add_row(part, *("-" if values[m] is None else f"{values[m]:.4f}" for m in METRICS))
    out.print(table)
    if out_json is not None:
        with atomic_output(out_json) as f:
            json.dump(metrics, f, indent=2)
        out.print(f"metrics → {out_json}")


@app.command("bench")
def bench_cmd(det: str = typer.Option("rtmdet-nano-person", "--det", help="Detector: .onnx or registered name."),
              pose: list[str] = typer.Option([], "--pose", help="Pose model(s): repeat to compare (e.g. FP32 "
                                             "and FP16 exports) side by side."),
              pose_spec: str | None = POSE_SPEC_OPTION,
              backend: list[str] = typer.Option(["auto"], "--backend", help=f"Backend(s): repeat to compare. "
                                                f"{BACKEND_PIPELINES}; triton: the server at --triton-url. Stage "
                                                "times on the CPU pipeline, end-to-end time on the others."),
              triton_url: str | None = typer.Option(None, "--triton-url", help="Triton server HOST:PORT for "
                                                    "--backend triton."),
              persons: str = typer.Option("1,2,4,8,16,32", help="People per synthetic frame, comma-separated."),
              frames: int = typer.Option(20, help="Timed frames per point (after 2 warm-up frames)."),
              ann: Path | None = typer.Option(None, help="COCO annotation file whose people are tiled (its photos "
                                              "beside it, or in --images)."),
              images: Path | None = typer.Option(None, help="Photos of people: the detector finds them and they are "
                                                 "tiled into frames of N people (or the folder of --ann's photos)."),
              threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads."),
              json_out: Path | None = typer.Option(None, "--out", help="Write the report as JSON."),
              plot_out: Path | None = typer.Option(None, "--plot", help="Write the stage/person plot as PNG.")) -> None:
    """Per-stage latency (p50/p90/p99), end-to-end FPS and the cost of each extra person."""
    from ..bench import Config, benchmark, detected_person_tiles, person_tiles, plot

    try:
        counts = sorted({int(v) for v in persons.split(",")})
    except ValueError:
        raise UsageError(f"--persons must be comma-separated integers, not {persons!r}") from None
    if not counts or counts[0] < 1 or frames < 1:
        raise UsageError("--persons values and --frames must be at least 1")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, not {threads}")
    if plot_out is not None and plot_out.suffix.lower() != ".png":
        raise UsageError("--plot writes a PNG picture: give a .png file name")
    inputs = [det, *pose, ann, images]
    json_out = check_output(json_out, option="--out", inputs=inputs, others=[plot_out])
    plot_out = check_output(plot_out, option="--plot", inputs=inputs, others=[json_out])
    if ann is None and images is None:
        raise UsageError("bench needs photos of people to tile into frames: --images DIR (the detector finds them) "
                         "or --ann COCO.json (its annotated people; photos beside it or in --images)")
    if ann is not None and not ann.is_file():
        raise RtmwEdgeError(f"annotation file not found: {ann}")
    images = images if images is not None else ann.parent
    if not images.is_dir():
        raise RtmwEdgeError(f"--images {images}: no such folder")
    configs = []
    unknown = [b for b in backend if b not in backend_names()]
    if unknown:
        raise UsageError(f"--backend must be one of {', '.join(backend_names())}, not {unknown[0]!r}")
    if "triton" in backend and not triton_url:
        raise UsageError("--backend triton needs --triton-url HOST:PORT")
    if any(b != "triton" for b in backend) and not pose:
        raise UsageError("bench needs --pose for the local backends")
    for b in backend:
        if b == "triton":  # the server's pipeline model: one configuration whatever --pose says
            configs.append(Config("triton", det, "", b, triton_url))
            continue
        for p in pose:
            label = Path(p).stem if len(backend) == 1 else f"{Path(p).stem}/{b}"
            while label in (c.name for c in configs):
                label += "'"
            configs.append(Config(label, det, p, b, pose_spec=pose_spec))
    tiles = person_tiles(ann, images) if ann is not None else detected_person_tiles(images, det)
    report = benchmark(configs, tiles, counts, frames=frames, threads=threads)
    table = Table(title=f"bench: ms per frame (mean), {frames} frames per point")
    table.add_column("config")
    table.add_column("persons", justify="right")
    for stage in ("det_inference", "pose_inference", "other"):
        table.add_column(stage, justify="right")
    table.add_column("end-to-end p50/p90/p99", justify="right")
    table.add_column("FPS", justify="right")
    for cfg in report["configs"]:
        for point in cfg["curve"]:
            st = point["stages_ms"]
            e2e = point["end_to_end_ms"]
            if st:
                other = point["stage_sum_ms"] - st["det_inference"]["mean"] - st["pose_inference"]["mean"]
                stages = (f"{st['det_inference']['mean']:.1f}", f"{st['pose_inference']['mean']:.1f}", f"{other:.1f}")
            else:  # triton: the stages run on the server
                stages = ("-", "-", "-")
            table.add_row(cfg["name"], str(point["persons_detected"]), *stages,
                          f"{e2e['p50']:.1f} / {e2e['p90']:.1f} / {e2e['p99']:.1f}", f"{point['fps']:.2f}")
        if "ms_per_extra_person" in cfg:
            out.print(f"{cfg['name']}: {cfg['ms_per_extra_person']:.1f} ms per extra person")
    out.print(table)
    if json_out is not None:
        with atomic_output(json_out) as f:
            json.dump(report, f, indent=2)
    if plot_out is not None:
        plot(report, plot_out)


# Command groups that live in modules of their own (each defines `register(app)`), keeping this file small.
from . import calibrate, engines, serve, triton  # noqa: E402

for _commands in (calibrate, engines, serve, triton):
    _commands.register(app)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _stdout_to_devnull() -> None:
    """After the reader of standard output left: what is still buffered goes nowhere, without an error at exit."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one `error:` line instead of a traceback, and exit codes scripts can rely on:
    0 success, 1 error while working, 2 usage error (before any work), 3 a command's own verdict (calibrate's
    target missed, check past its tolerances, build --check stale), 130 Ctrl-C, 143 SIGTERM (services — serve,
    triton serve — end with 0 on either)."""
    import typer.core
    from rich.markup import escape

    click = getattr(typer.core, "_click", None) or typer.core.click  # typer ≥ 0.22 vendors click as _click
    err = Console(stderr=True)

    def error(message: str) -> None:
        err.print(f"[red]error:[/red] {escape(_one_line(message))}", highlight=False, soft_wrap=True)

    restore = signals.install()  # SIGTERM / SIGINT only set a flag; work acts on it (rtmw_edge/signals.py)
    args = list(sys.argv[1:] if argv is None else argv)
    service = args[:1] == ["serve"] or args[:2] == ["triton", "serve"]  # a stop is how a service ends: exit 0
    try:
        if signals.requested() is not None and service:
            return 0  # stopped before it started
        signals.check()  # a stop that came during start-up: before any command begins its work
        code = app(args=args, standalone_mode=False, prog_name="rtmw-edge")
        code = code if isinstance(code, int) else 0
        if service and code == 130 and signals.requested() is not None:
            return 0  # the framework's own answer to a KeyboardInterrupt: for a service, a stop is a normal end
        return code
    except click.ClickException as exc:  # usage: unknown option, missing argument, bad value
        command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "rtmw-edge"
        error(f"{exc.format_message()} (see `{command} --help`)")
        return 2
    except RtmwEdgeError as exc:
        error(str(exc))
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        if service:
            return 0
        err.print("interrupted")
        return 130
    except Terminated:
        if service:
            return 0
        err.print("terminated")
        return 143
    except (BrokenPipeError, ReaderGone):  # `rtmw-edge ... | head`: the reader left, a normal end
        _stdout_to_devnull()
        return 0
    except SystemExit as exc:
        if exc.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":
            _stdout_to_devnull()  # click's own answer to EPIPE (exit 1): the reader left, a normal end
            return 0
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:  # a bug: still one line (RTMW_EDGE_DEBUG=1 shows the traceback)
        if os.environ.get("RTMW_EDGE_DEBUG"):
            raise
        error(f"internal error: {type(exc).__name__}: {exc} (please report it; RTMW_EDGE_DEBUG=1 shows the "
              "traceback)")
        return 1
    finally:
        if signals.requested() is None:
            restore()
        else:  # the process is ending on a stop: a second one during the interpreter's own exit changes nothing
            signals.ignore_further()

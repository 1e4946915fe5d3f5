"""`rtmw-edge calibrate`: FP32 ONNX → explicit Q/DQ INT8 ONNX (TensorRT 10.3 and 11) + fidelity report."""

from __future__ import annotations

from pathlib import Path

import typer

from ..engines import format_bytes
from ..errors import UsageError
from ..native_stderr import captured
from ..progress import progress_bar
from ..zoo import POSE_SPEC_HELP

EXIT_TARGET_MISSED = 3  # the INT8 model and report are written, but the fidelity target was not met


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)


def calibrate_cmd(
    model: Path = typer.Argument(..., help="FP32 ONNX: a pose model (rtmw-edge export) or a person detector "
                                 "(our export or a recognised foreign RTMDet / YOLOX graph)."),
    output: Path = typer.Option(..., "-o", "--output", help="The INT8 ONNX to write (atomically)."),
    images: Path | None = typer.Option(None, "--images", help="Folder of calibration images (with --coco: the "
                                       "annotation's image folder)."),
    coco: Path | None = typer.Option(None, "--coco", help="COCO annotation JSON: ground-truth person boxes for "
                                     "pose crops (and the image list)."),
    video: Path | None = typer.Option(None, "--video", help="Video file to sample calibration frames from."),
    num: int = typer.Option(512, "--num", help="Number of calibration samples."),
    method: str = typer.Option("percentile", "--method", help="Activation clip: percentile, max, entropy or mse."),
    percentile: float = typer.Option(99.999, "--percentile", help="Percentile of |x| for --method percentile."),
    det: Path | None = typer.Option(None, "--det", help="Pose models: the detector whose boxes make the crops."),
    det_threshold: float = typer.Option(0.3, "--det-threshold", help="Detector score threshold (as at run time)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Keep matching conv layers in float (node-name glob "
                                      "or substring; repeatable)."),
    auto_exclude: bool = typer.Option(False, "--auto-exclude", help="Per-layer sensitivity, then keep the worst "
                                      "layers in float until the fidelity target is met (validation samples)."),
    default_float: bool = typer.Option(True, "--default-float/--no-default-float",
                                       help="Keep depthwise convs (and a pose model's head conv) in float."),
    residual: bool = typer.Option(True, "--residual-qdq/--no-residual-qdq",
                                  help="Q/DQ on residual Add / Concat inputs between INT8 blocks."),
    bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction",
                                         help="Remove the mean INT8 error per output channel from conv biases."),
    cache: Path | None = typer.Option(None, "--cache", help="Calibration cache folder, reused by the next run "
                                      "(default $RTMW_EDGE_HOME/calibration/<model name>; hundreds of MB)."),
    report: Path | None = typer.Option(None, "--report", help="Also write the fidelity report here (.md + .json)."),
    eval_images: Path | None = typer.Option(None, "--eval-images", help="Held-out images for the report "
                                            "(default: --holdout of --images)."),
    holdout: float = typer.Option(0.2, "--holdout", help="Fraction of the images kept out of calibration for the "
                                  "report."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Flips/crops/zooms (detector) or box "
                                 "jitter (pose) beyond one sample per image/person."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    val_num: int = typer.Option(32, "--val-num", help="Validation samples for --auto-exclude."),
    target_recall: float = typer.Option(1.0, "--target-recall", help="Detector target: recall of FP32 detections "
                                        "at IoU 0.5."),
    target_iou: float = typer.Option(0.85, "--target-iou", help="Detector target: mean IoU."),
    target_oks: float = typer.Option(0.90, "--target-oks", help="Pose target: OKS against FP32."),
    min_int8_share: float = typer.Option(0.5, "--min-int8-share", help="--auto-exclude never goes below this "
                                         "share of conv MACs in INT8."),
    threads: int | None = typer.Option(None, "--threads", help="ONNX Runtime threads."),
    pose_spec: str | None = typer.Option(None, "--pose-spec", help=POSE_SPEC_HELP),
) -> None:
    """Calibrate and quantise to explicit Q/DQ INT8; write a fidelity report on held-out images.

    Exit 0 when the held-out fidelity target is met, 3 when it is not (the model and report are still
    written), 2 for bad options or output paths (checked before any work), 1 for other errors."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ..calibrate.data import Source
    from ..calibrate.fidelity import Target
    from ..calibrate.ranges import METHODS
    from ..calibrate.report import next_steps
    from ..calibrate.runner import CalibrateOptions, calibrate

    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    source = Source(images=images, coco=coco, video=video, eval_images=eval_images)
    opts = CalibrateOptions(
        model=model, output=output, source=source, num=num, method=method, percentile=percentile, det=det,
        det_threshold=det_threshold, exclude=list(exclude), auto_exclude=auto_exclude, default_exclusions=default_float,
        residual=residual, bias_correction=bias_correction, cache=cache, report=report, seed=seed, holdout=holdout,
        augment=augment, val_num=val_num, threads=threads, min_int8_share=min_int8_share, pose_spec=pose_spec,
        target=Target(min_recall50=target_recall, min_mean_iou=target_iou, min_oks=target_oks))
    console = Console(stderr=True)
    native = captured(lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True))
    bar = progress_bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=console, transient=False)
    with native, bar:  # a --video's FFmpeg lines: a few, then a count
        def progress(label: str, total: int | None):
            task = bar.add_task(label, total=total)
            return lambda n: bar.advance(task, n)

        result = calibrate(opts, progress=progress, log=lambda msg: bar.console.print(msg, highlight=False))

    rep = result.report
    out = Console()
    q = rep["quantization"]
    table = Table(title=f"{model.name} → {result.output.name}: {q['int8_layers']}/{q['layers']} convs INT8, "
                        f"{100 * q['int8_mac_share']:.1f} % of conv MACs")
    table.add_column("held-out fidelity (INT8 vs FP32)")
    table.add_column("value", justify="right")
    fid = rep.get("fidelity")
    if fid is None:
        table.add_row("no held-out images", "-")
    elif rep["task"] == "detector":
        n = fid["reference_detections"]
        table.add_row("FP32 detections", str(n))
        table.add_row("recovered at IoU ≥ 0.5", f"{fid['found_iou50']}/{n}")
        table.add_row("recovered at IoU ≥ 0.8", f"{fid['found_iou80']}/{n}")
        table.add_row("mean IoU", f"{fid['mean_iou']:.3f}")
        table.add_row("score shift (mean)", f"{fid['score_shift_mean']:+.3f}")
    else:
        table.add_row("keypoint displacement mean / p95 (px)", f"{fid['mean_px']:.2f} / {fid['p95_px']:.2f}")
        table.add_row("OKS vs FP32", f"{fid['oks']:.4f}")
        for part, d in fid.get("parts", {}).items():
            table.add_row(f"  {part}: OKS", f"{d['oks']:.4f}")
    out.print(table)
    if result.report_paths:
        out.print(f"report: {result.report_paths[0]}")
    folder = Path(rep["calibration"]["cache"])
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    out.print(f"calibration cache: {folder} ({format_bytes(size)}; the next calibrate of this model reuses it, delete "
              "it to free the space, --cache puts it elsewhere)", highlight=False, markup=False, soft_wrap=True)
    if rep.get("target"):
        met = rep["target"]["met"]
        verdict = "[green]met[/green]" if met else "[red]NOT met[/red]"
        out.print(f"target ({rep['target']['description']}): {verdict}")
        if not met:  # the INT8 model and the report are written; scripts and CI see the verdict
            for step in next_steps(rep):
                out.print(f"next: {step}", highlight=False, markup=False)
            raise typer.Exit(EXIT_TARGET_MISSED)

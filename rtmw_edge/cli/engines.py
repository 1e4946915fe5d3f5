"""CLI commands around TensorRT engines: `build`, `doctor`, `selftest` (registered by cli/__init__.py).

Thin layer: parse options, call `rtmw_edge.backends.tensorrt`, print. Without TensorRT, `build` and
`selftest` stop with one line (exit 1; without a GPU it says so first); `doctor` always reports and exits 0.
`build --check` exits 0 when the engine is up to date and 3 when it is missing or stale (for container
entrypoints); `selftest` exits 3 when an engine does not match ONNX Runtime (a verdict).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import selftest as selftest_module
from ..backends import availability, backend_names
from ..backends import tensorrt as trt_backend
from ..backends.tensorrt import build_engine, check_engine, probe_environment
from ..engines import EngineError, default_engine_path, install_hints, manifest_path, parse_batch, parse_contexts
from ..errors import UsageError
from ..onnx_meta import read_metadata
from ..outputs import check_output
from ..zoo import POSE_SPEC_HELP

EXIT_STALE = 3

out = Console(width=max(Console().width, 110))


def build_cmd(onnx: Path = typer.Argument(..., help="The ONNX to build (from `rtmw-edge export`, FP32/FP16/INT8)."),
              output: Path | None = typer.Option(None, "-o", "--output", help="Engine file (default: "
                                                 "engines/<onnx name>.engine; a folder puts it there)."),
              batch: str | None = typer.Option(None, "--batch", help="Batch profile MIN:OPT:MAX or one number "
                                               "(default: pose 1:8:32, detector fixed 1)."),
              workspace: str = typer.Option("2GiB", "--workspace", help="Builder workspace limit (2GiB, 512MiB)."),
              dla: int | None = typer.Option(None, "--dla", help="Run on this DLA core with GPU fallback (Jetson)."),
              timing_cache: Path | None = typer.Option(None, "--timing-cache", help="Timing cache file, loaded and "
                                                       "saved (default: timing.cache beside the engine)."),
              no_timing_cache: bool = typer.Option(False, "--no-timing-cache", help="Build without a timing cache."),
              fp16: bool = typer.Option(False, "--fp16", help="FP16 builder flag on an FP32 ONNX (TensorRT "
                                        "10.0-10.11 only; otherwise export with --precision fp16)."),
              force: bool = typer.Option(False, "--force", help="Rebuild even when a matching engine exists."),
              check: bool = typer.Option(False, "--check", help="Only report: exit 0 if the engine is up to "
                                         "date, 3 if it is missing or stale (and why)."),
              verbose: bool = typer.Option(False, "--verbose", help="Show TensorRT's info/verbose messages."),
              pose_spec: str | None = typer.Option(None, "--pose-spec", help=POSE_SPEC_HELP),
              contexts: int | None = typer.Option(None, "--contexts", help="Execution contexts a dynamic-batch engine "
                                                  "serves at once (one optimization profile each; the GPU "
                                                  "pipeline uses 2 per camera stream). Default 4.")) -> None:
    """Build a TensorRT engine from an ONNX (cached: skipped when a matching engine exists)."""
    try:
        parse_batch(batch)
    except EngineError as exc:
        raise UsageError(str(exc)) from None
    if dla is not None and dla < 0:
        raise UsageError(f"--dla must be a DLA core number (0, 1), not {dla}")
    read_metadata(onnx)  # a missing, empty or truncated ONNX: one line before TensorRT is even loaded
    if not check:  # every file the build writes, before TensorRT is even loaded
        engine = check_output(default_engine_path(onnx, output), option="-o", inputs=[onnx])
        check_output(manifest_path(engine), option="-o", inputs=[onnx])
        if timing_cache is not None and not no_timing_cache:
            check_output(timing_cache, option="--timing-cache", inputs=[onnx], others=[engine])
    if contexts is not None:
        try:
            parse_contexts(contexts)
        except EngineError as exc:
            raise UsageError(str(exc)) from None
    options = {"batch": batch, "workspace": workspace, "dla_core": dla, "fp16": fp16, "pose_spec": pose_spec,
               "contexts": contexts}
    if check:
        plan, status = check_engine(onnx, output, **options)
        if status.current:
            out.print(f"up to date: {plan.engine_path}", highlight=False, markup=False)
            return
        out.print(f"{status.state}: {plan.engine_path}: {status.explain()}", highlight=False, markup=False)
        raise typer.Exit(EXIT_STALE)
    build_engine(onnx, output, timing_cache=False if no_timing_cache else timing_cache, force=force, verbose=verbose,
                 console=out, **options)


def doctor_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
               engines: Path = typer.Option(Path("engines"), "--engines", help="Engine folder to inspect.")) -> None:
    """What this machine has for the GPU path and how to install what is missing (always exits 0).

    Driver, CUDA, GPUs, TensorRT, cuda-python, ONNX Runtime providers, NVRTC, cameras, built engines, and every
    --backend of the backend table: its pipeline and whether it can run here (its version, or why not)."""
    try:
        env = probe_environment(engines)
        env["missing"] = install_hints(env)
        env["backends"] = [asdict(availability(name)) for name in backend_names()]
    except Exception as exc:  # doctor reports, it never fails
        out.print(f"doctor could not finish probing: {type(exc).__name__}: {exc}", highlight=False, markup=False)
        return
    if as_json:
        out.print_json(json.dumps(env, default=str))
        return
    table = Table(title=f"rtmw-edge doctor ({'Jetson' if env['jetson'] else env['machine']})", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")

    def row(label: str, value) -> None:
        table.add_row(label, "[red]missing[/red]" if value in (None, "", []) else escape(str(value)))

    if env["jetson"]:
        row("Jetson release", env["l4t"])
    row("NVIDIA driver", env["driver"])
    row("CUDA (driver supports)", env["cuda_driver"])
    row("CUDA runtime (cuda-python)", env["cuda_runtime"])
    row("GPUs", "; ".join(f"{g['name']} (compute {g['compute_capability']}, {g['memory']})" for g in env["gpus"]))
    row("TensorRT", env["tensorrt"])
    row("cuda-python", env["cuda_python"])
    row("ONNX Runtime", f"{env['onnxruntime']} ({', '.join(env['onnxruntime_providers'])})"
        if env["onnxruntime"] else None)
    row("NVRTC", env["nvrtc"])
    row("cameras", ", ".join(c["device"] + (f" ({c['name']})" if c["name"] else "") for c in env["cameras"]) or
        "none (/dev/video*)")
    for e in env["engines"]:
        if e.get("problem") or not e["tensorrt"]:
            state = escape(e.get("problem") or "no manifest beside it")
        else:
            state = {True: "[green]usable here[/green]", False: "[red]built for another GPU/TensorRT: rebuild[/red]",
                     None: "cannot tell (no TensorRT here)"}[e["usable_here"]]
            state = f"TensorRT {escape(str(e['tensorrt']))}, {escape(str(e['gpu']))}: {state}"
        table.add_row(f"engine {Path(e['engine']).name}", state)
    for b in env["backends"]:
        state = (f"[green]available[/green]{' ' + escape(b['version']) if b['version'] else ''}" if b["available"]
                 else f"[red]unavailable[/red]: {escape(b['reason'] or '')}")
        table.add_row(f"--backend {b['backend']}", f"{state} [dim]({b['pipeline']} pipeline)[/dim]")
    out.print(table)
    if env["missing"]:
        out.print("[bold]missing for the TensorRT/GPU path:[/bold]")
        for hint in env["missing"]:
            out.print(f"  - {hint}", highlight=False, markup=False)
    else:
        out.print("[green]everything for the TensorRT path is present[/green]")


def selftest_cmd(workdir: Path | None = typer.Option(None, "--workdir", help="Keep the exports and engines "
                                                      "here (default: a temporary folder, removed after)."),
                 images: Path | None = typer.Option(None, "--images", help="Photos to compare on (default: a few "
                                                    "synthetic pictures).")) -> None:
    """Validate the TensorRT path here: export, build and check small engines against ONNX Runtime.

    Exports rtmpose-t and rtmdet-nano (random weights), builds their engines on this GPU and compares them
    with ONNX Runtime through `check`. Exit 0 when every engine matches, 3 (a verdict) otherwise."""
    from ..check import list_images, read_image

    if images is not None:
        for path in list_images(images):  # unreadable photos: one line now, not after the builds
            read_image(path)
    workdir = check_output(workdir, option="--workdir", inputs=[images], kind="dir")
    trt_backend.import_tensorrt()  # one clear line and exit 1 when TensorRT is missing
    folder = workdir or Path(tempfile.mkdtemp(prefix="rtmw-edge-selftest-"))
    try:
        rows = selftest_module.selftest(folder, images=images, console=out)
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    table = Table(title="selftest: TensorRT engine vs ONNX Runtime")
    for col in ("model", "build path", "precision", "build s", "max rel diff", "result"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], r.get("build_path", "-"), r.get("precision", "-"), str(r.get("build_seconds", "-")),
                      f"{r['max_rel']:.2e}" if "max_rel" in r else "-",
                      "[green]PASS[/green]" if r["passed"] else "[red]FAIL[/red]")
    out.print(table)
    for r in rows:
        for failure in r.get("failures", []) if not r["passed"] else []:
            out.print(f"[red]FAIL[/red] {r['model']}: {escape(failure)}", highlight=False)
    if not all(r["passed"] for r in rows):
        raise typer.Exit(EXIT_STALE)  # a verdict (3), as check's and calibrate's


def register(app: typer.Typer) -> None:
    app.command("build")(build_cmd)
    app.command("doctor")(doctor_cmd)
    app.command("selftest")(selftest_cmd)

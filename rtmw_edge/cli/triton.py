"""`rtmw-edge triton export | serve | setup` (registered by cli/__init__.py; docs/triton.md)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .. import signals
from ..errors import RtmwEdgeError, UsageError
from ..outputs import check_output
from ..ports import check_ports_free
from ..progress import status
from ..triton import DET_MODEL, PIPELINE_MODEL, POSE_MODEL
from ..triton.repository import export_repository, preferred_batch_sizes
from ..triton.server import TritonServer, TritonServerError, ensure_server_env
from ..zoo import POSE_SPEC_HELP

out = Console(width=max(Console().width, 110))
triton_app = typer.Typer(help="Triton Inference Server: model repository, server, remote backend (docs/triton.md).",
                         no_args_is_help=True)


@triton_app.command("export")
def export_cmd(det: str = typer.Option(..., "--det", help="Detector: .onnx, .engine (from `rtmw-edge build`) or "
                                       "registered name."),
               pose: str = typer.Option(..., "--pose", help="Pose model: .onnx, .engine or registered name."),
               output: Path = typer.Option(..., "-o", "--output", help="Model repository folder to write."),
               cpu: bool = typer.Option(False, "--cpu", help="CPU-only server (e.g. `triton serve`): run the ONNX "
                                        "files with ONNX Runtime inside the Python backend."),
               pose_batch: str | None = typer.Option(None, "--pose-batch", help="ONNX pose model: MIN:OPT:MAX "
                                                     "persons per execution (default 1:8:32; engines: their "
                                                     "profile)."),
               flip_test: bool = typer.Option(False, "--flip-test", help="Average with the mirrored crop."),
               det_threshold: float = typer.Option(0.3, "--det-threshold", help="Default detector threshold "
                                                   "(clients may send their own)."),
               nms_iou: float = typer.Option(0.3, "--nms-iou", help="Person NMS IoU."),
               max_persons: int = typer.Option(32, "--max-persons", help="Default persons per frame (clients may "
                                               "send their own)."),
               name: str = typer.Option(PIPELINE_MODEL, "--name", help="Name of the pipeline model."),
               instances: int = typer.Option(4, "--instances", help="Pipeline model instances (frames in flight)."),
               queue_delay_us: int = typer.Option(2000, "--queue-delay-us", help="Pose dynamic batcher: longest "
                                                  "wait for more requests (microseconds)."),
               threads: int = typer.Option(0, "--threads", help="--cpu: ONNX Runtime threads per model (0: all)."),
               force: bool = typer.Option(False, "--force", help="Replace an existing repository."),
               pose_spec: str | None = typer.Option(None, "--pose-spec", help=POSE_SPEC_HELP)) -> None:
    """Write a Triton model repository: detector + pose models and the BLS pipeline model."""
    result = export_repository(det, pose, output, cpu=cpu, pose_batch=pose_batch, flip_test=flip_test,
                               det_threshold=det_threshold, nms_iou=nms_iou, max_persons=max_persons,
                               pipeline_name=name, instances=instances, queue_delay_us=queue_delay_us,
                               threads=threads, force=force, console=out, pose_spec=pose_spec)
    table = Table(title=f"Triton model repository {result.repository}")
    for col in ("model", "runs as", "from", "max batch", "preferred batch"):
        table.add_column(col)
    for mf, model in ((result.det, DET_MODEL), (result.pose, POSE_MODEL)):
        preferred = ", ".join(map(str, preferred_batch_sizes(mf.batch))) if mf.batch and mf.batch[2] > 1 else "-"
        table.add_row(model, result.models[model], mf.path.name, str(mf.max_batch_size or "fixed"), preferred)
    table.add_row(name, result.models[name], "rtmw_edge.triton.models", "1 frame", "-")
    out.print(table)
    server = "rtmw-edge triton serve --repository " + str(output) if cpu else "NVIDIA's tritonserver image"
    out.print(f"serve it with {server}; clients: rtmw-edge run SOURCE --backend triton --triton-url HOST:8001",
              highlight=False, markup=False)


@triton_app.command("setup")
def setup_cmd(python: Path | None = typer.Option(None, "--python", envvar="RTMW_EDGE_TRITON_PYTHON",
                                                 help="Interpreter the server's Python models run in "
                                                      "(default /usr/bin/python3.11, the one the wheel's stub "
                                                      "links).")) -> None:
    """Build (once) the cached environment `triton serve` runs in; prints its folder."""
    env = _server_env(python)
    out.print(f"Triton server environment: {env.root}", highlight=False, markup=False)


@triton_app.command("serve")
def serve_cmd(repository: Path = typer.Option(..., "--repository", help="Model repository (from `triton export "
                                              "--cpu`)."),
              host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every "
                                       "interface)."),
              grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port (0: a free one)."),
              http_port: int = typer.Option(8000, "--http-port", help="HTTP port (0: a free one)."),
              metrics_port: int = typer.Option(8002, "--metrics-port", help="Prometheus metrics port (0: free)."),
              python: Path | None = typer.Option(None, "--python", envvar="RTMW_EDGE_TRITON_PYTHON",
                                                 help="Interpreter for the server's Python models."),
              timeout: float = typer.Option(180.0, "--timeout", help="Seconds to wait for every model to load."),
              log: Path | None = typer.Option(None, "--log", help="Server log file (default: a temporary file)."),
              check_every: float = typer.Option(5.0, "--check-every", help="Seconds between health checks.")) -> None:
    """Run tritonserver (from the nvidia-pytriton wheel) on a repository, with health checks; stop: Ctrl-C/SIGTERM."""
    ports = (grpc_port, http_port, metrics_port)
    if min(ports) < 0 or max(ports) > 65535:
        raise UsageError(f"ports must be in 0..65535 (0: a free one), not {', '.join(map(str, ports))}")
    if timeout <= 0 or check_every <= 0:
        raise UsageError("--timeout and --check-every must be positive")
    log = check_output(log, option="--log", inputs=[repository])
    if not repository.is_dir():
        raise RtmwEdgeError(f"--repository {repository}: " + ("not a folder" if repository.exists() else
                                                              "folder not found"))
    models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    if not models:
        raise RtmwEdgeError(f"--repository {repository} has no model folders with a config.pbtxt: make one with "
                            "`rtmw-edge triton export --cpu`")
    check_ports_free(host, {"--grpc-port": grpc_port, "--http-port": http_port, "--metrics-port": metrics_port},
                     " (another tritonserver?): stop it, or choose another port (0: a free one)")
    env = _server_env(python)
    server = TritonServer(repository, host=host, grpc_port=grpc_port, http_port=http_port,
                          metrics_port=metrics_port, env=env, log_path=log)
    # SIGTERM / Ctrl-C only set a flag (rtmw_edge.signals); this loop looks at it, so the stop below always runs to
    # its end, whatever arrives during it
    try:
        out.print(f"starting tritonserver on {repository} ({', '.join(models)}) …", highlight=False, markup=False)
        with status(out, "waiting for every model to load (/v2/health/ready) …"):
            seconds = server.start(timeout, should_stop=signals.requested)
        if seconds is None:
            return
        out.print(f"ready in {seconds:.1f} s — gRPC {server.grpc_url}, HTTP {server.http_url}, metrics "
                  f"{server.metrics_url}; log {server.log_path}", highlight=False, markup=False)
        failures = 0
        while not signals.wait(check_every):
            if not server.alive():
                raise TritonServerError(f"tritonserver exited: {server.failure_reason()}")
            failures = 0 if server.healthy() else failures + 1
            if failures == 3:
                out.print(f"warning: tritonserver has not been ready for {3 * check_every:.0f} s", highlight=False,
                          markup=False)
    finally:
        t = time.monotonic()
        code = server.stop()
        if code is not None:
            out.print(f"tritonserver stopped in {time.monotonic() - t:.1f} s", highlight=False, markup=False)


def _server_env(python: Path | None):
    """The cached server venv; building it (about a minute, once) shows each step under a spinner."""
    with status(out, "checking the Triton server environment …") as spinner:
        def step(text: str) -> None:
            out.print(text, highlight=False, markup=False)
            spinner.update(text + " …")

        return ensure_server_env(python, log=step)


def register(app: typer.Typer) -> None:
    app.add_typer(triton_app, name="triton")

#!/usr/bin/env python3
"""N camera clients against one Triton server vs N local pipelines on the same machine, side by side.

For each client count (default 1, 2, 4) the same work runs twice, in alternating order: N processes that each
send frames to the server's pipeline model (`--backend triton`, gRPC, raw frames), and N processes that each run
a local `PoseEstimator` (ONNX Runtime, CPU). Every process handles the same frames (the COCO test photos in
turn, 13 persons in 5 frames; each process first runs every photo once, untimed); rounds alternate remote,
local, local, remote. The figures are frames/s of all processes together, per-frame latency p50/p99,
and from the server's Prometheus metrics the batches Triton actually formed for the pose model (persons per
execution, and requests — frames' pose calls — per execution: > 1 means the dynamic batcher merged cameras).
With one client it also splits the remote path's extra time per frame into the server's own request time and
the rest (serialisation, gRPC, the client).

The server is `tritonserver` from the nvidia-pytriton wheel (`rtmw-edge triton setup`) on 127.0.0.1 with a CPU
repository exported from the shared RTMDet-nano and a random-weight RTMW-m (speed does not depend on the
weights). Run it on a quiet machine (the team's exclusive CPU lock):

    python scripts/bench_triton.py [--clients 1,2,4] [--frames 10] [--out b.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
DET = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
PHOTOS = sorted((SHARED / "images").glob("*.jpg"))


def _client(kind: str, target: dict, frames: int, ready, go, results) -> None:
    """One camera: warm up on every photo (each batch size once), wait for the others, then `frames` frames;
    report latencies and the time span."""
    if kind == "remote":
        from rtmw_edge.triton.client import TritonPoseEstimator

        est = TritonPoseEstimator(target["url"])
    else:
        from rtmw_edge.pipeline import PoseEstimator

        est = PoseEstimator(target["det"], target["pose"])
    images = [cv2.imread(str(p)) for p in PHOTOS]
    for image in images:
        est(image)
    ready.wait()
    go.wait()
    latencies, persons = [], 0
    start = time.perf_counter()
    for i in range(frames):
        t = time.perf_counter()
        persons += len(est(images[i % len(images)], i).persons)
        latencies.append(time.perf_counter() - t)
    results.put({"latencies": latencies, "start": start, "end": time.perf_counter(), "persons": persons})


def run_round(kind: str, target: dict, clients: int, frames: int, metrics_url: str | None = None) -> dict:
    """`clients` processes at once; with `metrics_url`, the server's counters just before the timed frames and
    after them (warm-up excluded)."""
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(kind, target, frames, ready, go, results)) for _ in range(clients)]
    for p in procs:
        p.start()
    ready.wait(timeout=900)
    before = metrics(metrics_url) if metrics_url else {}
    go.wait(timeout=60)
    done = [results.get(timeout=900) for _ in procs]
    after = metrics(metrics_url) if metrics_url else {}
    for p in procs:
        p.join(60)
    lat = np.concatenate([d["latencies"] for d in done]) * 1000
    span = max(d["end"] for d in done) - min(d["start"] for d in done)
    return {"frames": int(len(lat)), "persons": int(sum(d["persons"] for d in done)), "seconds": span,
            "fps": len(lat) / span, "latencies_ms": lat.tolist(), "before": before, "after": after}


def pooled(rounds: list[dict]) -> dict:
    """Several rounds of one contender: frames/s over their summed time, latency percentiles over all frames."""
    lat = np.concatenate([r["latencies_ms"] for r in rounds])
    seconds = sum(r["seconds"] for r in rounds)
    return {"frames": int(len(lat)), "seconds": seconds, "fps": len(lat) / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(lat.mean())}


def metrics(url: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith("nv_inference_") and 'model="' in line:
            model = line.split('model="', 1)[1].split('"', 1)[0]
            out.setdefault(model, {})[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def delta(after: dict, before: dict, model: str, key: str) -> float:
    return after.get(model, {}).get(key, 0.0) - before.get(model, {}).get(key, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument("--frames", type=int, default=10, help="frames per client per round")
    parser.add_argument("--work", type=Path, default=None, help="folder for the models and the repository")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per contender (2: remote, local, local, "
                        "remote)")
    parser.add_argument("--instances", type=int, default=4, help="pipeline model instances")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    from rtmw_edge.export import export_onnx
    from rtmw_edge.triton.repository import export_repository
    from rtmw_edge.triton.server import TritonServer, ensure_server_env

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-triton-"))
    pose = work / "rtmw-m-256x192.onnx"
    if not pose.is_file():
        export_onnx("rtmw-m-256x192", pose, random_init=True, progress=False)
    repo = work / "repository"
    export_repository(DET, pose, repo, cpu=True, instances=max(args.instances, max(counts)), force=True,
                      progress=False)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, env=ensure_server_env(),
                          log_path=work / "server.log")
    startup = server.start(300)
    print(f"tritonserver ready in {startup:.1f} s ({server.grpc_url}); machine {platform.processor() or ''} "
          f"{mp.cpu_count()} cores", flush=True)
    target = {"url": server.grpc_url, "det": str(DET), "pose": str(pose)}
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": {"platform": platform.platform(),
              "cores": mp.cpu_count()}, "startup_s": startup, "frames_per_client": args.frames, "rows": []}
    try:
        for n in counts:
            rounds = {"remote": [], "local": []}
            order = (["remote", "local", "local", "remote"] * args.repeats)[: 2 * args.repeats]  # ABBA...
            for kind in order:
                rounds[kind].append(run_round(kind, target, n, args.frames,
                                              server.metrics_url if kind == "remote" else None))
            row = {"clients": n, "order": order, "remote": pooled(rounds["remote"]), "local": pooled(rounds["local"])}
            count = {key: sum(delta(r["after"], r["before"], "rtmw_pose", key) for r in rounds["remote"])
                     for key in ("nv_inference_exec_count", "nv_inference_request_success", "nv_inference_count")}
            exe, req, inf = (count[k] for k in ("nv_inference_exec_count", "nv_inference_request_success",
                                                "nv_inference_count"))
            row["pose_batching"] = {"executions": exe, "requests": req, "persons": inf,
                                    "persons_per_execution": inf / max(exe, 1),
                                    "requests_per_execution": req / max(exe, 1)}
            pipe_req = sum(delta(r["after"], r["before"], "rtmw_pipeline", "nv_inference_request_success")
                           for r in rounds["remote"])
            pipe_us = sum(delta(r["after"], r["before"], "rtmw_pipeline", "nv_inference_request_duration_us")
                          for r in rounds["remote"])
            row["server_pipeline_ms"] = pipe_us / 1000 / max(pipe_req, 1)
            report["rows"].append(row)
            r, lo, b = row["remote"], row["local"], row["pose_batching"]
            print(f"{n} client(s): remote {r['fps']:.2f} FPS p50 {r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms | "
                  f"local {lo['fps']:.2f} FPS p50 {lo['p50_ms']:.0f} ms p99 {lo['p99_ms']:.0f} ms | ratio "
                  f"{r['fps'] / lo['fps']:.2f} | pose: {b['persons_per_execution']:.2f} persons and "
                  f"{b['requests_per_execution']:.2f} requests per execution ({b['executions']:.0f} executions)",
                  flush=True)
        one = next((row for row in report["rows"] if row["clients"] == 1), None)
        if one is not None:
            remote, local = one["remote"], one["local"]
            report["overhead_1_client"] = {
                "mean_remote_minus_local_ms": remote["mean_ms"] - local["mean_ms"],
                "p50_remote_minus_local_ms": remote["p50_ms"] - local["p50_ms"],
                "server_pipeline_ms": one["server_pipeline_ms"],
                "client_beyond_server_ms": remote["mean_ms"] - one["server_pipeline_ms"]}
            o = report["overhead_1_client"]
            print(f"remote path per frame (1 client): mean {remote['mean_ms']:.1f} ms vs local {local['mean_ms']:.1f} "
                  f"ms ({o['mean_remote_minus_local_ms']:+.1f} ms; p50 {o['p50_remote_minus_local_ms']:+.1f} ms); "
                  f"the server's pipeline request {o['server_pipeline_ms']:.1f} ms, the rest (serialisation, gRPC, "
                  f"client) {o['client_beyond_server_ms']:.1f} ms")
    finally:
        server.stop()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

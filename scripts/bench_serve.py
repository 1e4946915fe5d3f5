#!/usr/bin/env python3
"""`rtmw-edge serve` under hostile clients, on loopback: figures for docs/daemon.md (issue 15).

The daemon runs as its own process (as under systemd: `run_daemon`, its signal handling, JSON logs on
stderr, native stderr captured, `os._exit`), fed by a looping video. Every load generator is a separate
process, so neither shares the daemon's event loop or GIL:

- `flood`:   N half-open connections (half send nothing, half send one header line every 2 s: slowloris);
             a connection the daemon closes is opened again at once, so N stay open as far as it allows;
- `clients`: M real WebSocket clients (half authenticate with the header, half with ``?access_token=``),
             recording each frame's arrival and how their connection ended;
- `hammer`:  K concurrent loops of GET /metrics and GET /latest/cam;
- a prober thread here: GET /healthz every 0.25 s, timed.

Phases (one daemon): the clients alone (baseline) → + the half-open flood → + the hammering → SIGHUP with
two cameras (one removed, one added, then an invalid file) while the clients stay connected. Then
SIGTERM under full load (clients + flood + hammering), once per trial, each on a fresh daemon. Then the
secrets: the token and the camera password must appear nowhere in the log, `serve --check` or /metrics.

Stub inference (default): `StubEstimator` (tests/test_serve_support.py) sleeps like an inference call, so
the frame rate measures the daemon, not the models. ``--estimator real``: the real RTMDet-nano detector
and a random-weight RTMW-m on ONNX Runtime (1 thread). Run timing figures on a quiet machine:

    python scripts/bench_serve.py [--seconds 60] [--nofile 1024]

Prints one JSON report (and writes it with --out). Exit code 0 when every goal is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tests"))

TOKEN = "bench-token-Zq8xP3w"   # what the secrets check greps for
CAM_PASSWORD = "campw-Lx92TqR"
SOURCE_FPS = 20.0
GOALS = {"rate_ratio_min": 0.9, "healthz_max_s": 1.0, "flood_log_lines_max": 100, "loop_lag_p99_max_s": 0.05,
         "sigterm_max_s": 2.0}


# ============================================================================ load generator processes
def role_flood(port: int, n: int, seconds: float, instant: bool = False) -> dict:
    """Keep N half-open connections to PORT for SECONDS; re-open those the daemon closed once per second, as
    slowloris does (INSTANT: at once, as fast as the daemon closes them)."""
    sel = selectors.DefaultSelector()
    slow: dict[socket.socket, float] = {}
    stats = {"opened": 0, "closed_by_server": 0, "connect_errors": 0, "max_open": 0}
    head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"

    def open_one(i: int) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            stats["connect_errors"] += 1
            s.close()
            return
        sel.register(s, selectors.EVENT_READ, i)
        stats["opened"] += 1
        if i % 2:
            slow[s] = 0.0

    end = time.monotonic() + seconds
    closed: list[int] = []
    last_refill = time.monotonic()
    for i in range(n):
        open_one(i)
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # closed by the daemon: an attacker opens another one
                sel.unregister(s)
                slow.pop(s, None)
                s.close()
                stats["closed_by_server"] += 1
                if instant and time.monotonic() < end:
                    open_one(key.data)
                else:
                    closed.append(key.data)
        now = time.monotonic()
        if closed and now - last_refill >= 1.0:
            for i in closed:
                open_one(i)
            closed.clear()
            last_refill = now
        for s, last in list(slow.items()):
            if now - last >= 2.0:
                try:
                    s.send(head if last == 0.0 else b"X-Slow: 1\r\n")
                except OSError:
                    pass
                slow[s] = now
        stats["max_open"] = max(stats["max_open"], len(sel.get_map()))
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return stats


def role_clients(port: int, n: int, camera: str, until: float, windows: list[tuple[float, float]]) -> dict:
    """N WebSocket clients of CAMERA until UNTIL (monotonic); per client: frames in each window, end reason."""
    import aiohttp

    async def one(i: int, session) -> dict:
        arrivals: list[float] = []
        headers = {"Authorization": f"Bearer {TOKEN}"} if i % 2 == 0 else {}
        query = f"?camera={camera}" + ("" if i % 2 == 0 else f"&access_token={TOKEN}")
        end = {"code": None, "error": None, "closed_at": None}
        try:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws{query}", headers=headers,
                                          heartbeat=None) as ws:
                while True:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        msg = await ws.receive(timeout=left)
                    except asyncio.TimeoutError:
                        break
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        arrivals.append(time.monotonic())
                        continue
                    end["code"], end["closed_at"] = ws.close_code, time.monotonic()
                    break
        except Exception as exc:  # a refused or failed connection
            end["error"] = f"{type(exc).__name__}: {exc}"
        counts = [sum(a <= t < b for t in arrivals) for a, b in windows]
        return {"counts": counts, **end}

    async def main() -> list[dict]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await asyncio.gather(*(one(i, session) for i in range(n)))

    return {"clients": asyncio.run(main())}


def role_hammer(port: int, n: int, camera: str, seconds: float) -> dict:
    """N concurrent loops of GET /metrics and GET /latest/CAMERA for SECONDS."""
    import aiohttp

    stats = {"requests": 0, "errors": 0, "max_s": 0.0, "status": {}}

    async def loop(session, i: int) -> None:
        end = time.monotonic() + seconds
        paths = ["/metrics", f"/latest/{camera}"]
        k = i
        while time.monotonic() < end:
            t = time.monotonic()
            try:
                async with session.get(f"http://127.0.0.1:{port}{paths[k % 2]}",
                                       headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                    await resp.read()
                    stats["status"][str(resp.status)] = stats["status"].get(str(resp.status), 0) + 1
            except Exception:
                stats["errors"] += 1
                await asyncio.sleep(0.05)
            stats["requests"] += 1
            stats["max_s"] = max(stats["max_s"], time.monotonic() - t)
            k += 1

    async def main() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(loop(session, i) for i in range(n)))

    asyncio.run(main())
    return stats


def role_daemon(config: str, delay: float, die_file: str) -> None:
    """The daemon with the stub estimator (`run_daemon`, as the CLI runs it). DIE_FILE: once it exists, the
    stub raises a BaseException and the inference thread dies (the liveness check)."""
    from test_serve_support import StubEstimator

    from rtmw_edge.serve.config import load_config
    from rtmw_edge.serve.daemon import run_daemon

    class KillThread(BaseException):  # not an Exception: the worker's per-frame handler does not catch it
        pass

    class Killable(StubEstimator):
        def __call__(self, image, frame=0, timestamp=0.0):
            if die_file and os.path.exists(die_file):
                raise KillThread("the inference thread is killed on purpose")
            return super().__call__(image, frame, timestamp)

    run_daemon(load_config(config), estimator=Killable(delay=delay), reloader=lambda: load_config(config))


# ============================================================================ controller
def _spawn(role: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--role", role, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _result(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _metrics(port: int) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = _get(port, "/metrics")
    assert status == 200, status
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def _sum(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def _lag_share_over(before: dict, after: dict, threshold: float = 0.05) -> tuple[float, int]:
    """(share of loop-lag samples above THRESHOLD between two scrapes, samples)."""
    name = "rtmw_edge_event_loop_lag_seconds_count"
    count = _sum(after, name) - _sum(before, name)
    le = ("le", f"{threshold}")
    under = (after.get(("rtmw_edge_event_loop_lag_seconds_bucket", (le,)), 0.0)
             - before.get(("rtmw_edge_event_loop_lag_seconds_bucket", (le,)), 0.0))
    return ((count - under) / count if count else 0.0), int(count)


def _lag_p99_bucket(before: dict, after: dict) -> float:
    """The upper bound of the histogram bucket holding the 99th percentile of the loop lag between two scrapes."""
    name = "rtmw_edge_event_loop_lag_seconds_bucket"
    bounds = sorted(float(dict(lab)["le"]) for (n, lab) in after if n == name)
    count = "rtmw_edge_event_loop_lag_seconds_count"
    total = _sum(after, count) - _sum(before, count)
    for bound in bounds:
        key = (name, (("le", "+Inf" if bound == float("inf") else f"{bound}"),))
        if total and (after.get(key, 0.0) - before.get(key, 0.0)) / total >= 0.99:
            return bound
    return float("inf")


class Prober(threading.Thread):
    """GET /healthz every 0.25 s; records (monotonic, status, seconds)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.samples, self._halt = port, [], threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.monotonic()
            try:
                status, _ = _get(self.port, "/healthz", timeout=5.0)
            except Exception:
                status = 0
            self.samples.append((t, status, time.monotonic() - t))
            self._halt.wait(0.25)

    def stop(self) -> list[tuple[float, int, float]]:
        self._halt.set()
        self.join(10)
        return self.samples


class Daemon:
    """The daemon process: stub (this script's `role_daemon`) or real (`rtmw-edge serve`)."""

    def __init__(self, config: Path, log: Path, estimator: str, nofile: int, delay: float, die_file: Path) -> None:
        if estimator == "stub":
            argv = [sys.executable, str(Path(__file__).resolve()), "--role", "daemon", str(config), str(delay),
                    str(die_file)]
        else:
            argv = [sys.executable, "-m", "rtmw_edge.cli", "serve", "--config", str(config)]

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log_file, cwd=ROOT,
                                     preexec_fn=limits)
        self.port = self._wait_port()

    def lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": line, "event": "NOT JSON"})
        return out

    def _wait_port(self, timeout: float = 120.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            for entry in self.lines():
                if entry.get("event") == "listening":
                    return int(entry["port"])
            time.sleep(0.05)
        raise RuntimeError("the daemon did not start listening")

    def wait_ready(self, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if _get(self.port, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the daemon did not get ready")

    def sigterm(self) -> tuple[int, float]:
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20)
        return code, time.monotonic() - t

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log_file.close()


def _write_config(path: Path, clip: Path, door_port: int, args, cameras: str = "cam,door",
                  extra: str = "", more_cameras: str = "") -> None:
    model = ""
    if args.estimator == "real":
        model = (f'[model]\ndet = "{args.det}"\npose = "{args.pose}"\nthreads = 1\nmax_persons = 2\n')
    cams = {
        "cam": f'[cameras.cam]\nsource = "{clip}"\nloop = true\n',
        "yard": f'[cameras.yard]\nsource = "{clip}"\nloop = true\nmax_fps = 5\n',
        "door": (f'[cameras.door]\nsource = "rtsp://viewer:{CAM_PASSWORD}@127.0.0.1:{door_port}/stream"\n'
                 "reconnect_min_s = 0.5\nreconnect_max_s = 30\n"),
    }
    path.write_text(
        f'[server]\nport = 0\ntoken = "{TOKEN}"\nready_when = "any"\nmax_clients = 500\n'
        f"header_timeout_s = {args.header_timeout}\ninference_stall_s = {args.stall}\n{extra}\n{model}"
        + "".join(cams[c] for c in cameras.split(",")) + more_cameras)


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    return f"{os.cpu_count()} CPUs ({cpu}), load average {os.getloadavg()[0]:.2f} at the start"


def _rates(result: dict, window: int, seconds: float) -> list[float]:
    return [c["counts"][window] / seconds for c in result["clients"]]


def run(args) -> dict:
    from test_serve_support import AcceptAndClose, write_video

    work = Path(tempfile.mkdtemp(prefix="rtmw-edge-bench-serve-"))
    clip = write_video(work / "clip.avi", (320, 240), fps=SOURCE_FPS, frames_per_image=2)
    door = AcceptAndClose()  # an "RTSP camera" (with a password in its URL) that drops every connection
    config = work / "daemon.toml"
    _write_config(config, clip, door.port, args)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": _machine(), "estimator": args.estimator,
                    "nofile": args.nofile, "half_open": args.half_open, "flood_reconnect":
                    "instant" if args.instant_reconnect else "every 1 s", "clients": args.clients,
                    "hammer": args.hammer, "seconds": args.seconds, "goals": GOALS, "work": str(work)}
    d = Daemon(config, work / "daemon.log", args.estimator, args.nofile, args.delay, work / "die")
    try:
        d.wait_ready()
        report["main"] = _main_phases(d, args, config, clip, door.port)
    finally:
        d.stop()
    report["secrets"], killed = _secrets_and_liveness(args, clip, door.port, work)
    if killed is not None:
        report["killed_inference"] = killed
    report["sigterm"] = _sigterm_trials(args, config, work)
    door.close()
    report["ok"] = _verdict(report)
    return report


def _main_phases(d: Daemon, args, config: Path, clip: Path, door_port: int) -> dict:
    port, s, base = d.port, args.seconds, args.baseline
    t0 = time.monotonic() + 3.0  # the clients connect within this
    w_base = (t0, t0 + base)
    w_flood = (w_base[1] + 3.0, w_base[1] + 3.0 + s)          # flood starts 3 s before its window
    w_hammer = (w_flood[1] + 3.0, w_flood[1] + 3.0 + args.hammer_seconds)
    w_hup = (w_hammer[1] + 1.0, w_hammer[1] + 1.0 + args.hup_seconds)
    until = w_hup[1] + 1.0
    clients = _spawn("clients", port, args.clients, "cam", until, json.dumps([w_base, w_flood, w_hammer, w_hup]))
    prober = Prober(port)
    prober.start()
    out: dict = {}

    def sleep_until(t: float) -> None:
        time.sleep(max(0.0, t - time.monotonic()))

    sleep_until(w_base[1])
    lines_before = len(d.lines())
    flood = _spawn("flood", port, args.half_open, w_flood[1] - time.monotonic() + 1.0, *args.flood_mode)
    sleep_until(w_flood[0])
    m1 = _metrics(port)
    sleep_until(w_flood[1])
    m2 = _metrics(port)
    flood_stats = _result(flood, 60)
    time.sleep(1.0)
    lines = d.lines()[lines_before:]
    hammer = _spawn("hammer", port, args.hammer, "cam", w_hammer[1] - time.monotonic())
    sleep_until(w_hammer[0])
    m3 = _metrics(port)
    hammer_stats = _result(hammer, args.hammer_seconds + 60)
    m4 = _metrics(port)

    # SIGHUP: remove "door", add "yard" (the clients of "cam" stay), then an invalid file (nothing changes)
    sleep_until(w_hup[0])
    _write_config(config, clip, door_port, args, cameras="cam,yard")
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(args.hup_seconds / 3)
    after_hup = json.loads(_get(port, "/readyz")[1])
    config_text = config.read_text()
    config.write_text(config_text + "\n[server]\nbogus = 1\n")
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(args.hup_seconds / 6)
    alive_after_bad = d.proc.poll() is None
    config.write_text(config_text)
    sleep_until(until)
    m5 = _metrics(port)
    probes = prober.stop()
    result = _result(clients, 120)

    base_rates = _rates(result, 0, base)
    base_mean = sum(base_rates) / len(base_rates)
    flood_rates, hammer_rates, hup_rates = (_rates(result, k, w) for k, w in
                                            ((1, s), (2, args.hammer_seconds), (3, w_hup[1] - w_hup[0])))
    lag_flood, n_flood = _lag_share_over(m1, m2)
    lag_hammer, n_hammer = _lag_share_over(m3, m4)
    in_flood = [p for p in probes if w_flood[0] - 3.0 <= p[0] < w_flood[1]]
    dropped = {reason: _sum(m5, "rtmw_edge_clients_dropped_total", kind="websocket", reason=reason)
               for reason in ("slow", "timeout", "heartbeat", "protocol", "camera_removed")}
    events: dict[str, int] = {}
    for entry in lines:
        events[entry.get("event", "?")] = events.get(entry.get("event", "?"), 0) + 1
    out.update({
        "baseline": {"mean_fps": round(base_mean, 2), "min_fps": round(min(base_rates), 2)},
        "flood": {
            "min_fps": round(min(flood_rates), 2), "mean_fps": round(sum(flood_rates) / len(flood_rates), 2),
            "min_ratio": round(min(flood_rates) / base_mean, 3), "generator": flood_stats,
            "healthz_max_s": round(max(p[2] for p in in_flood), 3),
            "healthz_non_200": sum(p[1] != 200 for p in in_flood), "healthz_probes": len(in_flood),
            "log_lines": len(lines), "log_events": events,
            "connections_closed": {r: _sum(m2, "rtmw_edge_clients_dropped_total", kind="connection", reason=r)
                                   for r in ("header_timeout", "evicted", "over_capacity")},
            "accept_errors": _sum(m2, "rtmw_edge_accept_errors_total"),
            "connection_limit": _sum(m2, "rtmw_edge_connection_limit"),
            "loop_lag_over_50ms": round(lag_flood, 4), "loop_lag_samples": n_flood,
            "loop_lag_p99_bucket_s": _lag_p99_bucket(m1, m2),
            "loop_lag_p99_s_last_60s": round(_sum(m2, "rtmw_edge_event_loop_lag_p99_seconds"), 4),
        },
        "hammer": {
            "min_fps": round(min(hammer_rates), 2), "min_ratio": round(min(hammer_rates) / base_mean, 3),
            "generator": hammer_stats, "loop_lag_over_50ms": round(lag_hammer, 4), "loop_lag_samples": n_hammer,
            "loop_lag_p99_bucket_s": _lag_p99_bucket(m3, m4),
            "loop_lag_p99_s_last_60s": round(_sum(m4, "rtmw_edge_event_loop_lag_p99_seconds"), 4),
        },
        "sighup": {
            "alive": d.proc.poll() is None, "alive_after_invalid_file": alive_after_bad,
            "cameras_after": sorted(after_hup["cameras"]),
            "cam_clients_min_fps_during": round(min(hup_rates), 2),
            "reloads": {r: _sum(m5, "rtmw_edge_config_reloads_total", result=r) for r in ("applied", "failed")},
        },
        "clients_dropped": dropped,
        "clients_ended_early": sum(c["code"] is not None or c["error"] is not None for c in result["clients"]),
        "healthz_max_s_overall": round(max(p[2] for p in probes), 3),
        "healthz_non_200_overall": sum(p[1] != 200 for p in probes),
    })
    return out


def _secrets_and_liveness(args, clip: Path, door_port: int, work: Path) -> tuple[dict, dict | None]:
    """A daemon with the access log on, a camera URL with a password (its failures logged), and clients that
    send the token in the header and in the query: the token and the password must be nowhere. Then (stub
    inference) its inference thread is killed: how long until /healthz fails."""
    from test_serve_support import FakeNetworkCamera

    config = work / "secrets.toml"
    mjpeg = FakeNetworkCamera(fps=20.0, corrupt_every=10)  # FFmpeg complains on stderr about each bad part
    mjpeg.start()
    url = mjpeg.url.replace("http://", f"http://viewer:{CAM_PASSWORD}@")
    _write_config(config, clip, door_port, args, extra="access_log = true",
                  more_cameras=f'[cameras.mjpeg]\nsource = "{url}"\n')
    d = Daemon(config, work / "secrets.log", args.estimator, args.nofile, args.delay, work / "die")
    killed = None
    try:
        d.wait_ready()
        for path in ("/healthz", f"/metrics?access_token={TOKEN}", "/latest/cam"):
            _get(d.port, path)
        urllib.request.urlopen(f"http://127.0.0.1:{d.port}/readyz?access_token={TOKEN}", timeout=5).read()
        until = time.monotonic() + 2.0
        _result(_spawn("clients", d.port, 2, "cam", until, json.dumps([[0, until]])), 60)
        _, body = _get(d.port, "/metrics")
        samples = _metrics(d.port)
        check = subprocess.run([sys.executable, "-m", "rtmw_edge.cli", "serve", "--config", str(config), "--check"],
                               capture_output=True, text=True, cwd=ROOT, timeout=120)
        if args.estimator == "stub":
            killed = _kill_inference(d, work / "die", args.stall)
    finally:
        d.stop()
        mjpeg.stop()
        (work / "die").unlink(missing_ok=True)
    texts = {"log": d.log.read_text(errors="replace"), "check": check.stdout + check.stderr,
             "metrics": body.decode()}
    secrets = {"found": {name: [s for s in (TOKEN, CAM_PASSWORD) if s in text] for name, text in texts.items()},
               "access_lines": texts["log"].count('"event": "access"'),
               "masked_token_in_access_log": "access_token=***" in texts["log"],
               "masked_password_in_log": f"viewer:***@127.0.0.1:{door_port}" in texts["log"],
               "native_lines": texts["log"].count('"event": "native_log"'),
               "non_json_lines": sum(1 for e in d.lines() if e.get("event") == "NOT JSON"),
               "corrupt_mjpeg": {"sent_bad": mjpeg.corrupted,
                                 "counted": _sum(samples, "rtmw_edge_frames_dropped_total", camera="mjpeg",
                                                 reason="corrupt"),
                                 "reconnects": _sum(samples, "rtmw_edge_reconnects_total", camera="mjpeg"),
                                 "processed": _sum(samples, "rtmw_edge_frames_processed_total", camera="mjpeg")}}
    return secrets, killed


def _kill_inference(d: Daemon, die_file: Path, stall: float) -> dict:
    before = _get(d.port, "/healthz")[0]
    die_file.write_text("now")
    t = time.monotonic()
    status = 200
    while status == 200 and time.monotonic() - t < stall + 5:
        status = _get(d.port, "/healthz")[0]
        time.sleep(0.02)
    return {"before": before, "after": status, "seconds": round(time.monotonic() - t, 3), "stall_s": stall}


def _sigterm_trials(args, config: Path, work: Path) -> list[dict]:
    trials = []
    for k in range(args.sigterm_trials):
        d = Daemon(config, work / f"sigterm-{k}.log", args.estimator, args.nofile, args.delay, work / "die")
        try:
            d.wait_ready()
            until = time.monotonic() + 30.0
            clients = _spawn("clients", d.port, args.clients, "cam", until, json.dumps([[0, until]]))
            _wait_clients(d.port, args.clients)
            flood = _spawn("flood", d.port, args.half_open, 8.0, *args.flood_mode)
            hammer = _spawn("hammer", d.port, args.hammer, "cam", 8.0)
            time.sleep(3.0)
            code, seconds = d.sigterm()
            result = _result(clients, 60)
            for proc in (flood, hammer):
                proc.communicate(timeout=30)
            codes: dict[str, int] = {}
            for c in result["clients"]:
                codes[str(c["code"] if c["code"] is not None else c["error"])] = \
                    codes.get(str(c["code"] if c["code"] is not None else c["error"]), 0) + 1
            trials.append({"exit_code": code, "seconds": round(seconds, 3), "close_codes": codes})
        finally:
            d.stop()
    return trials


def _wait_clients(port: int, n: int, timeout: float = 60.0) -> None:
    """Until N WebSocket clients are connected (the daemon's own gauge)."""
    end = time.monotonic() + timeout
    while _sum(_metrics(port), "rtmw_edge_clients", kind="websocket") < n:
        if time.monotonic() > end:
            raise RuntimeError(f"{n} WebSocket clients did not connect within {timeout:g} s")
        time.sleep(0.2)


def _verdict(r: dict) -> dict:
    m, g = r["main"], GOALS
    checks = {
        "flood_rate_ratio": m["flood"]["min_ratio"] >= g["rate_ratio_min"],
        "flood_healthz": m["flood"]["healthz_max_s"] < g["healthz_max_s"] and m["flood"]["healthz_non_200"] == 0,
        "flood_log_lines": m["flood"]["log_lines"] <= g["flood_log_lines_max"],
        "hammer_zero_drops": all(v == 0 for k, v in m["clients_dropped"].items() if k != "camera_removed")
        and m["clients_ended_early"] == 0,
        "hammer_loop_lag_p99": m["hammer"]["loop_lag_over_50ms"] <= 0.01,
        "flood_loop_lag_p99": m["flood"]["loop_lag_over_50ms"] <= 0.01,
        "sighup": m["sighup"]["alive"] and m["sighup"]["alive_after_invalid_file"]
        and m["sighup"]["cameras_after"] == ["cam", "yard"],
        "sigterm": all(t["exit_code"] == 0 and t["seconds"] < g["sigterm_max_s"] for t in r["sigterm"]),
        "sigterm_close_1001": all(set(t["close_codes"]) <= {"1001"} for t in r["sigterm"]),
        "secrets": not any(r["secrets"]["found"].values()),
        "json_logs": r["secrets"]["non_json_lines"] == 0 and r["secrets"]["native_lines"] > 0,
        "corrupt_frames_skipped": r["secrets"]["corrupt_mjpeg"]["counted"] > 0
        and r["secrets"]["corrupt_mjpeg"]["reconnects"] == 0,
    }
    if "killed_inference" in r:
        k = r["killed_inference"]
        checks["killed_inference"] = k["before"] == 200 and k["after"] != 200 and k["seconds"] <= k["stall_s"]
    return checks


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        role, rest = sys.argv[2], sys.argv[3:]
        if role == "daemon":
            role_daemon(rest[0], float(rest[1]), rest[2])
            return 0
        if role == "flood":
            out = role_flood(int(rest[0]), int(rest[1]), float(rest[2]), rest[3:] == ["instant"])
        elif role == "clients":
            out = role_clients(int(rest[0]), int(rest[1]), rest[2], float(rest[3]),
                               [tuple(w) for w in json.loads(rest[4])])
        elif role == "hammer":
            out = role_hammer(int(rest[0]), int(rest[1]), rest[2], float(rest[3]))
        else:
            raise SystemExit(f"unknown role {role}")
        print(json.dumps(out))
        return 0
    args = parse_args(sys.argv[1:])
    if args.estimator == "real":
        _real_models(args)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(report["ok"].values()) else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimator", choices=("stub", "real"), default="stub")
    parser.add_argument("--seconds", type=float, default=60.0, help="the half-open flood phase")
    parser.add_argument("--baseline", type=float, default=10.0, help="the clients alone")
    parser.add_argument("--hammer-seconds", type=float, default=20.0)
    parser.add_argument("--hup-seconds", type=float, default=12.0, help="the SIGHUP phase")
    parser.add_argument("--half-open", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--hammer", type=int, default=50)
    parser.add_argument("--nofile", type=int, default=65536, help="the daemon's open-file limit "
                        "(65536: the systemd unit's LimitNOFILE; 1024: systemd's old default)")
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--stall", type=float, default=2.0, help="server.inference_stall_s")
    parser.add_argument("--delay", type=float, default=0.01, help="stub inference seconds")
    parser.add_argument("--sigterm-trials", type=int, default=10)
    parser.add_argument("--instant-reconnect", action="store_true", help="the flood re-opens a closed "
                        "connection at once (default: once per second, as slowloris does)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.flood_mode = ["instant"] if args.instant_reconnect else []
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < args.nofile:
        args.nofile = hard  # a limit can only go up to the hard one
    return args


def _real_models(args) -> None:
    from rtmw_edge.export import export_onnx

    cache = Path(tempfile.gettempdir()) / "rtmw-edge-bench-serve-models"
    cache.mkdir(exist_ok=True)
    pose = cache / "rtmw-m-random.onnx"
    if not pose.is_file():
        export_onnx("rtmw-m-256x192", pose, random_init=True, progress=False)
    args.det = str(SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx")
    args.pose = str(pose)


if __name__ == "__main__":
    sys.exit(main())

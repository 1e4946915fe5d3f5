"""Processes that end cleanly, always (issue 23 §2): SIGTERM / SIGINT sent to the whole process group of `run`,
`serve`, `triton serve`, `calibrate` and `build`, once and twice, at seeded random moments.

Each case starts the real command line in its own session (so `os.killpg` reaches it as a terminal's Ctrl-C, a
`timeout` wrapper or `docker stop` would), picks from the seed which signal, whether it comes once or twice, and
when: during start-up (once the process has its handlers: its `SigCgt` mask in /proc shows SIGTERM caught) or while
it works (a marker in its output: JSON lines written, "listening", "ready in", calibration data built, the engine
plan printed), plus a random delay; a second signal follows the first by a random delay, into the shutdown.
Then it checks, against the process's own traces:

- the documented exit code (README: 143 SIGTERM, 130 Ctrl-C; `serve` and `triton serve` end with 0 — a stop is
  how a service ends), within a generous bound (a hang fails, slowness does not);
- no child left: every process carries a per-case token in its environment, and none may remain afterwards
  (`triton serve` starts `tritonserver` and its Python-backend stubs);
- no temporary or partial file (`.partial`, `.part`, `.old`) anywhere in the case's folder, no final artifact of an
  interrupted `calibrate` / `build`, every file that exists readable as what it claims to be;
- a valid JSON-lines prefix: `run --out` holds whole frames numbered from 0, `serve`'s log is one JSON object per line.

Everything listens on 127.0.0.1. The default run takes each command once per variant (a few seconds each, the two
variants side by side); `RTMW_EDGE_SIGNAL_SEED` picks another seed, and the `slow` loop runs many seeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
IMAGES = SHARED / "images"
RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
SEED = int(os.environ.get("RTMW_EDGE_SIGNAL_SEED", "23"))
BOUND_S = 120.0        # a hang fails the test; this is no timing assertion (loaded 2-core machines are slow)
TEMPORARY = (".partial", ".part", ".old", ".tmp")
SIGTERM_CAUGHT = 1 << (signal.SIGTERM - 1)

pytestmark = pytest.mark.skipif(not RAWHEAD.is_file(), reason="shared models not available")

FAKE_BUILD = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from fake_tensorrt import make_fake_tensorrt
trt = make_fake_tensorrt("10.3.0.30")
trt.build_step_seconds = 1.0  # three tactic steps: a build that takes a few seconds, like a real one
sys.modules["tensorrt"] = trt
from rtmw_edge.backends import tensorrt as backend
from rtmw_edge.engines import GpuInfo
backend.gpu_identity = lambda device=0: GpuInfo("Orin", "8.7")
from rtmw_edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from rtmw_edge.export import export_onnx

    root = tmp_path_factory.mktemp("signal-inputs")
    pose = export_onnx("dwpose-t-256x192", root / "dwpose-t.onnx", random_init=True, progress=False)
    clip = root / "clip.avi"
    image = cv2.imread(str(IMAGES / "000000000785.jpg"))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (image.shape[1], image.shape[0]))
    for i in range(8):
        writer.write(np.roll(image, 8 * i, axis=1))
    writer.release()
    return {"pose": pose, "clip": clip, "root": root}


@pytest.fixture(scope="module")
def triton_repository(inputs):
    pytest.importorskip("tritonclient", reason="the 'triton' extra")
    from rtmw_edge.cli import main
    from rtmw_edge.triton.server import ensure_server_env

    ensure_server_env()  # cached (`rtmw-edge triton setup`, run by the README's test command)
    repo = inputs["root"] / "repo"
    if not repo.is_dir():
        assert main(["triton", "export", "--det", str(RAWHEAD), "--pose", str(inputs["pose"]), "-o", str(repo),
                     "--cpu", "--threads", "1", "--instances", "1"]) == 0
    return repo


# ----------------------------------------------------------------------------------------------------- cases
@dataclass
class Command:
    name: str
    argv: Callable[[Path], list[str]]         # the command line, given the case's folder
    working: Callable[[Path, str, str], bool]  # (folder, stdout, stderr) → the command is at work
    service: bool = False                      # serve / triton serve: a stop is a normal end (exit 0)
    check: Callable[[Path, str, str], None] = lambda folder, out, err: None
    prepare: Callable[[Path], None] = lambda folder: None


@dataclass
class Plan:
    signum: int
    twice: bool
    phase: str          # "start-up" or "working"
    delay: float        # after the phase began
    second: float       # after the first signal
    describe: str = field(init=False)

    def __post_init__(self) -> None:
        name = signal.Signals(self.signum).name
        self.describe = (f"{name} {'twice' if self.twice else 'once'} during {self.phase} +{self.delay:.2f} s"
                         + (f", again +{self.second:.2f} s" if self.twice else ""))


def make_plan(rng: random.Random, twice: bool) -> Plan:
    return Plan(signum=rng.choice([signal.SIGTERM, signal.SIGINT]), twice=twice,
                phase=rng.choice(["start-up", "working"]), delay=rng.uniform(0.0, 1.0), second=rng.uniform(0.0, 0.5))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtmw_edge.cli", *args]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _free_port() -> int:
    from rtmw_edge.triton.server import free_port

    return free_port("127.0.0.1")


def commands(inputs, triton_repository=None) -> dict[str, Command]:
    pose, clip = inputs["pose"], inputs["clip"]

    def check_run(folder: Path, out: str, err: str) -> None:
        frames = [json.loads(line) for line in _lines(folder / "o.jsonl")]  # every line whole, parseable
        assert [f["frame"] for f in frames] == list(range(len(frames)))
        video = folder / "o.avi"
        if video.exists():  # finalised on the way out: it plays
            cap = cv2.VideoCapture(str(video))
            ok, _ = cap.read()
            cap.release()
            assert ok or not frames, "the annotated video does not play"

    def serve_config(folder: Path) -> None:
        (folder / "daemon.toml").write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {_free_port()}\n[model]\ndet = "{RAWHEAD}"\npose = "{pose}"\n'
            f'threads = 1\n[log]\nformat = "json"\n[cameras.door]\nsource = "{clip}"\nloop = true\n')

    def check_serve(folder: Path, out: str, err: str) -> None:
        for line in err.splitlines():  # the daemon's log: one JSON object per line, even while stopping
            json.loads(line)

    def check_calibrate(folder: Path, out: str, err: str) -> None:
        assert not (folder / "det.int8.onnx").exists(), "an interrupted calibration wrote its model"
        cache = folder / "cache"
        if (cache / "manifest.json").exists():
            json.loads((cache / "manifest.json").read_text())
        for shard in cache.glob("*.npy"):  # shards are whole (written atomically) or absent
            assert np.load(shard).ndim == 4

    def check_build(folder: Path, out: str, err: str) -> None:
        assert not list(folder.rglob("*.engine")) and not list(folder.rglob("*.engine.json"))

    table = {
        "run": Command("run", lambda f: _cli("run", str(clip), "--loop", "--det", str(RAWHEAD), "--pose", str(pose),
                                             "--threads", "1", "--out", str(f / "o.jsonl"), "--save", str(f / "o.avi")),
                       lambda f, out, err: bool(_lines(f / "o.jsonl")), check=check_run),
        "serve": Command("serve", lambda f: _cli("serve", "--config", str(f / "daemon.toml")),
                         lambda f, out, err: '"event": "listening"' in err, service=True, check=check_serve,
                         prepare=serve_config),
        "calibrate": Command("calibrate", lambda f: _cli("calibrate", str(RAWHEAD), "--images", str(IMAGES), "-o",
                                                         str(f / "det.int8.onnx"), "--num", "48", "--threads", "1",
                                                         "--cache", str(f / "cache")),
                             lambda f, out, err: "calibration data:" in err, check=check_calibrate),
        "build": Command("build", lambda f: [sys.executable, "-c", FAKE_BUILD, "build", str(pose), "-o",
                                             str(f / "engines" / "pose.engine")],
                         lambda f, out, err: "workspace:" in out, check=check_build),
    }
    if triton_repository is not None:
        table["triton serve"] = Command(
            "triton serve", lambda f: _cli("triton", "serve", "--repository", str(triton_repository), "--grpc-port",
                                           "0", "--http-port", "0", "--metrics-port", "0", "--check-every", "1",
                                           "--log", str(f / "server.log")),
            lambda f, out, err: "ready in" in out, service=True)
    return table


# ------------------------------------------------------------------------------------------------- one case
def _caught_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(mask, 16) & SIGTERM_CAUGHT)


def _with_token(token: str) -> list[str]:
    """Processes (any user may read their own) whose environment carries the case's token."""
    found = []
    needle = f"RTMW_EDGE_SIGNAL_CASE={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(f"{entry.name} {(entry / 'cmdline').read_bytes()[:120]!r}")
        except OSError:
            continue
    return found


def run_case(command: Command, plan: Plan, folder: Path) -> None:
    folder.mkdir(parents=True)
    command.prepare(folder)
    token = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RTMW_EDGE_SIGNAL_CASE": token,
           "RTMW_EDGE_HOME": os.environ.get("RTMW_EDGE_HOME", str(Path.home() / ".cache" / "rtmw-edge"))}
    out_path, err_path = folder.parent / f"{folder.name}.out", folder.parent / f"{folder.name}.err"
    with open(out_path, "w") as out_file, open(err_path, "w") as err_file:
        proc = subprocess.Popen(command.argv(folder), stdout=out_file, stderr=err_file, stdin=subprocess.DEVNULL,
                                env=env, cwd=folder, start_new_session=True)
    what = f"{command.name}: {plan.describe}"
    try:
        deadline = time.monotonic() + BOUND_S
        ready = (lambda: _caught_sigterm(proc.pid)) if plan.phase == "start-up" else (
            lambda: command.working(folder, out_path.read_text(), err_path.read_text()))
        while not ready():
            assert proc.poll() is None, f"{what}: ended before the signal ({proc.returncode}): {err_path.read_text()}"
            assert time.monotonic() < deadline, f"{what}: never reached {plan.phase}: {err_path.read_text()[-2000:]}"
            time.sleep(0.02)
        time.sleep(plan.delay)
        os.killpg(proc.pid, plan.signum)
        if plan.twice:
            time.sleep(plan.second)
            try:
                os.killpg(proc.pid, plan.signum)
            except ProcessLookupError:
                pass  # already ended: the second signal had nothing to reach
        try:
            proc.wait(BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{what}: still running {BOUND_S:.0f} s after the signal") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out, err = out_path.read_text(), err_path.read_text()
    expected = 0 if command.service else {signal.SIGTERM: 143, signal.SIGINT: 130}[plan.signum]
    assert proc.returncode == expected, f"{what}: exit {proc.returncode}, expected {expected}: {err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in out, f"{what}: {err[-3000:]}"
    left_deadline = time.monotonic() + 20  # children are stopped before the command exits; their end is reaped
    while (left := _with_token(token)) and time.monotonic() < left_deadline:
        time.sleep(0.2)
    assert not left, f"{what}: processes left behind: {left}"
    leftovers = [str(p.relative_to(folder)) for p in folder.rglob("*") if any(m in p.name for m in TEMPORARY)]
    assert not leftovers, f"{what}: temporary or partial files left: {leftovers}"
    command.check(folder, out, err)


def run_both(command: Command, seed: int, folder: Path) -> None:
    """The once and the twice variant of one command, side by side (each in its own session)."""
    rng = random.Random(f"{seed}:{command.name}")
    plans = [make_plan(rng, twice=False), make_plan(rng, twice=True)]
    errors: list[BaseException] = []

    def one(plan: Plan, name: str) -> None:
        try:
            run_case(command, plan, folder / name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p, n)) for p, n in zip(plans, ("once", "twice"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("name", ["run", "serve", "calibrate", "build", "triton serve"])
def test_a_stop_signal_ends_the_command_cleanly(name, inputs, tmp_path, request):
    repo = request.getfixturevalue("triton_repository") if name == "triton serve" else None
    run_both(commands(inputs, repo)[name], SEED, tmp_path)


@pytest.mark.slow  # the loop of issue 23: many seeds; the default run above takes one
def test_stop_signals_in_a_loop(inputs, triton_repository, tmp_path):
    runs = int(os.environ.get("RTMW_EDGE_SIGNAL_RUNS", "20"))
    table = commands(inputs, triton_repository)
    for i in range(runs):
        for name, command in table.items():
            run_both(command, SEED + 1000 + i, tmp_path / f"{i}" / name.replace(" ", "-"))


# ------------------------------------------------------------------------------------ children end with parents
CHILD_OF_KILLED_PARENT = """
import subprocess, sys, time
sys.path.insert(0, {root!r})
from rtmw_edge import signals
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=signals.die_with_parent())
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int, bound: float = 20.0) -> bool:
    """True once `pid` no longer runs (a zombie waiting for init to reap it counts as gone)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_child_ends_with_its_parent_even_when_the_parent_is_killed():
    """`signals.die_with_parent()`: Linux's parent-death signal reaches the child when the parent dies by SIGKILL
    (no handler, no cleanup of its own can run then)."""
    parent = subprocess.Popen([sys.executable, "-c", CHILD_OF_KILLED_PARENT.format(root=str(ROOT))],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child, 0.3), "the child did not start"
        parent.kill()
        parent.wait()
        assert _gone(child), "the child outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


FAKE_TRITONSERVER_PARENT = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from rtmw_edge.triton.server import ServerEnv, TritonServer
class Env(ServerEnv):  # a stand-in binary where tritonserver would be: it never becomes ready
    tritonserver = property(lambda self: Path({binary!r}))
    backends = property(lambda self: self.root)
    process_env = lambda self: dict(__import__("os").environ)
server = TritonServer({repo!r}, env=Env(Path({root_env!r}), Path(sys.executable)), http_port=0, grpc_port=0,
                      metrics_port=0, log_path={log!r})
def report():
    print(server.process.pid, flush=True)
    return False
server.start(timeout=120, should_stop=report)
"""


def test_tritonserver_ends_with_a_killed_cli(tmp_path):
    """The process `TritonServer` starts (in its own session, out of reach of a terminal's Ctrl-C) gets the
    parent-death signal when the CLI that started it is killed outright: it cannot keep its ports as an orphan."""
    binary = tmp_path / "tritonserver"
    binary.write_text("#!/bin/sh\nexec sleep 120\n")
    binary.chmod(0o755)
    repo = tmp_path / "repo" / "m"
    repo.mkdir(parents=True)
    (repo / "config.pbtxt").write_text('name: "m"\n')
    code = FAKE_TRITONSERVER_PARENT.format(root=str(ROOT), binary=str(binary), repo=str(repo.parent),
                                           root_env=str(tmp_path), log=str(tmp_path / "server.log"))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    server = None
    try:
        server = int(parent.stdout.readline())
        assert not _gone(server, 0.3), "the stand-in server did not start"
        parent.kill()
        parent.wait()
        assert _gone(server), "tritonserver outlived the killed CLI"
    finally:
        if parent.poll() is None:
            parent.kill()
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server, signal.SIGKILL)


def test_a_taken_port_is_one_line_before_anything_starts(inputs, tmp_path, capsys):
    """serve and triton serve name the taken port in one line (exit 2) before loading a model or a server."""
    import socket

    from rtmw_edge.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "d.toml").write_text(f'[server]\nport = {port}\n[model]\ndet = "{RAWHEAD}"\npose = '
                                         f'"{inputs["pose"]}"\n[cameras.a]\nsource = "{inputs["clip"]}"\n')
        repo = tmp_path / "repo" / "m"
        repo.mkdir(parents=True)
        (repo / "config.pbtxt").write_text('name: "m"\n')
        for argv, what in ((["serve", "--config", str(tmp_path / "d.toml")], f"port {port} on 127.0.0.1"),
                           (["triton", "serve", "--repository", str(repo.parent), "--http-port", str(port),
                             "--grpc-port", "0", "--metrics-port", "0"], f"--http-port {port} on 127.0.0.1")):
            assert main(argv) == 2, argv
            err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert len(err) == 1 and err[0].startswith(f"error: {what}: already in use"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.toml", "repo"]  # no log, no server folder


@pytest.mark.slow  # ~20 s: the real server and its Python-backend stubs; the stand-in test above is the fast one
def test_real_tritonserver_and_its_stubs_end_with_a_killed_cli(triton_repository, tmp_path):
    token = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RTMW_EDGE_SIGNAL_CASE": token}
    proc = subprocess.Popen(_cli("triton", "serve", "--repository", str(triton_repository), "--grpc-port", "0",
                                 "--http-port", "0", "--metrics-port", "0", "--log", str(tmp_path / "server.log")),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if "ready in" in line:
                break
        assert len(_with_token(token)) > 2  # the CLI, tritonserver and its stubs
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60
        while (left := _with_token(token)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, left
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------------------------ the flag itself
@pytest.fixture
def installed():
    """The CLI's handlers in this (main) thread, restored afterwards whatever the test did."""
    from rtmw_edge import signals

    before = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    restore = signals.install()
    yield signals
    restore()
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_the_handler_only_sets_a_flag_and_work_raises_once(installed):
    from rtmw_edge.errors import Terminated
    from rtmw_edge.progress import progress_bar

    os.kill(os.getpid(), signal.SIGTERM)  # delivered to this thread: the handler runs before the next line
    assert installed.wait(5.0) and installed.requested() == signal.SIGTERM  # no exception came from the handler
    os.kill(os.getpid(), signal.SIGTERM)
    installed.wait(0.1)
    assert installed.count() == 2 and installed.requested() == signal.SIGTERM  # the second is counted, not acted on
    seen = []
    thread = threading.Thread(target=lambda: seen.append(installed.check()))  # other threads are never interrupted
    thread.start()
    thread.join()
    assert seen == [None]
    with progress_bar(disable=True) as bar:  # a bar's step is where work looks at the flag
        task = bar.add_task("work", total=3)
        with pytest.raises(Terminated):
            bar.update(task, advance=1)
        bar.advance(task)  # cleanup that advances a bar again is not interrupted twice
    installed.check()


def test_the_cli_ignores_stop_signals_once_it_returns_on_one(installed, monkeypatch, capsys):
    """The interpreter resets Python-level handlers to the default action while it finalises: a process ending on a
    stop would die by a second signal then (another exit code, or a traceback). So main leaves them ignored."""
    from rtmw_edge import cli

    def stopped(task=None):
        os.kill(os.getpid(), signal.SIGINT)
        installed.wait(5.0)
        installed.check()

    monkeypatch.setattr(cli, "list_models", stopped)     # the command's work, stopped by a signal
    assert cli.main(["models", "list"]) == 130
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is signal.SIG_IGN

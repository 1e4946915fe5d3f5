"""NVRTC: the project's `.cu` kernels → CUBIN (or PTX), cached on disk per GPU architecture.

No CUDA toolkit is needed: NVRTC comes from the `nvidia-cuda-nvrtc-cu12` wheel and is driven through
cuda-python (`pip install 'rtmw-edge[gpu]'`), so compiling also works on a machine without a GPU (CI
checks every kernel for sm_72 Xavier, sm_87 Orin and sm_90 H100). CUDA 12's NVRTC is pinned: CUDA 13
dropped offline compilation for sm_72.

Cache: `$RTMW_EDGE_HOME/kernels/<arch>/<file stem>-<key>.<cubin|ptx>` where the key hashes the source,
the options, the NVRTC version and the output kind; files are written atomically, so concurrent processes
at worst compile twice. A failed compilation raises `NvrtcError`: one line naming the file, the
architecture and the first error of the NVRTC log; the full log is kept in `.log`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..downloads import home_dir
from ..errors import MissingDependencyError, RtmwEdgeError

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"
KERNEL_FILES = ("letterbox.cu", "detector_post.cu", "crops.cu", "decode.cu")
TARGET_ARCHS = ("sm_72", "sm_87", "sm_90")   # Xavier, Orin, H100 (the CI compile check)
# --fmad=false: no multiply-add contraction, so the float32/float64 arithmetic is the numpy twin's, op for op
BASE_OPTIONS = ("--fmad=false", "--std=c++17", "-default-device")
_GPU_EXTRA_HINT = "pip install 'rtmw-edge[gpu]' (cuda-python and the CUDA 12 NVRTC wheel)"


class NvrtcError(RtmwEdgeError):
    """A kernel that NVRTC cannot compile; `log` holds NVRTC's full log."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class CompiledKernel:
    name: str          # file name, e.g. "crops.cu"
    arch: str          # sm_87 (cubin) or compute_87 (ptx)
    kind: str          # "cubin" | "ptx"
    image: bytes       # what cuModuleLoadData takes (PTX is NUL-terminated)
    path: Path | None  # cache file (None when caching is off)
    cached: bool       # True when read from the cache


def nvrtc_module():
    """cuda-python's nvrtc bindings (new layout first, then the pre-12.6 one)."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        try:
            from cuda import nvrtc  # type: ignore[no-redef]  # cuda-python < 12.6
        except ImportError:
            raise MissingDependencyError(f"compiling the CUDA kernels needs cuda-python: {_GPU_EXTRA_HINT}") from None
    return nvrtc


def _check(result, what: str):
    """Unpack an NVRTC call's (error, *values) tuple; raise on a non-success code."""
    nvrtc = nvrtc_module()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        name = getattr(err, "name", str(err))
        raise NvrtcError(f"NVRTC {what} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the loaded NVRTC library; MissingDependencyError when the library is absent."""
    nvrtc = nvrtc_module()
    try:
        result = nvrtc.nvrtcVersion()
    except Exception as exc:  # the shared library itself is missing (no nvidia-cuda-nvrtc wheel)
        raise MissingDependencyError(f"the NVRTC library cannot be loaded ({type(exc).__name__}): "
                                     f"{_GPU_EXTRA_HINT}") from None
    major, minor = _check(result, "version")
    return int(major), int(minor)


def nvrtc_available() -> tuple[bool, str]:
    """(True, "NVRTC 12.9") or (False, why) — for tests and the benchmark's preflight."""
    try:
        major, minor = nvrtc_version()
    except RtmwEdgeError as exc:
        return False, str(exc)
    return True, f"NVRTC {major}.{minor}"


def supported_archs() -> list[int]:
    """Compute capabilities this NVRTC can compile for, e.g. [50, ..., 72, ..., 87, 89, 90, ...]."""
    nvrtc = nvrtc_module()
    nvrtc_version()
    if not hasattr(nvrtc, "nvrtcGetSupportedArchs"):  # very old bindings
        return [72, 75, 80, 86, 87, 89, 90]
    return sorted(int(a) for a in _check(nvrtc.nvrtcGetSupportedArchs(), "get supported archs"))


def choose_target(capability: tuple[int, int], supported: list[int]) -> tuple[str, str]:
    """What to build for a device of compute capability (major, minor).

    A CUBIN for the exact architecture when NVRTC knows it (no JIT at load time); for a device newer
    than this NVRTC, PTX for the highest architecture below it, which the driver JIT-compiles once.
    """
    cc = capability[0] * 10 + capability[1]
    if cc in supported:
        return "cubin", f"sm_{cc}"
    lower = [a for a in supported if a <= cc]
    if not lower:
        raise RtmwEdgeError(f"this NVRTC cannot compile for compute capability {capability[0]}.{capability[1]} "
                            f"(it supports {', '.join(map(str, supported))})")
    return "ptx", f"compute_{max(lower)}"


def arch_option(kind: str, arch: str) -> str:
    """--gpu-architecture value: sm_XX for a CUBIN, compute_XX for PTX (either spelling accepted)."""
    digits = arch.split("_", 1)[-1]
    if not digits.isdigit():
        raise RtmwEdgeError(f"bad GPU architecture {arch!r}: expected sm_XX or compute_XX")
    return f"--gpu-architecture={'sm' if kind == 'cubin' else 'compute'}_{digits}"


def _out_buffer(size) -> bytearray:
    """A fresh writable buffer for NVRTC to fill. Never `b" " * n`: for n ≤ 1 CPython returns its shared
    one-byte bytes object, and NVRTC writing its terminating NUL there turns every b" " of the process into
    b"\\x00" (seen as corrupted URLs and HTTP headers far away from this code)."""
    return bytearray(max(int(size), 1))


def cache_key(source: str, options: tuple[str, ...], version: tuple[int, int], kind: str) -> str:
    """Hash of everything that changes the compiled image."""
    digest = hashlib.sha256()
    for part in (source, "\0".join(options), f"{version[0]}.{version[1]}", kind):
        digest.update(part.encode())
        digest.update(b"\x1f")
    return digest.hexdigest()[:20]


def cache_dir() -> Path:
    return home_dir() / "kernels"


def _first_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[0] if lines else "no log"


def compile_source(source: str, name: str, kind: str, arch: str, options: tuple[str, ...] = ()) -> bytes:
    """Compile one CUDA source with NVRTC; returns CUBIN bytes or NUL-terminated PTX."""
    if kind not in ("cubin", "ptx"):
        raise RtmwEdgeError(f"kind must be 'cubin' or 'ptx', not {kind!r}")
    nvrtc = nvrtc_module()
    nvrtc_version()  # a clear error when the library is missing
    opts = [arch_option(kind, arch), *BASE_OPTIONS, *options]
    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []), "create program")
    try:
        result = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        err = result[0] if isinstance(result, tuple) else result
        log_size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "get log size")
        log_buf = _out_buffer(log_size)
        _check(nvrtc.nvrtcGetProgramLog(prog, log_buf), "get log")
        log = bytes(log_buf).rstrip(b"\0 ").decode(errors="replace")
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise NvrtcError(f"NVRTC cannot compile {name} for {arch}: {_first_error(log)}", log)
        if kind == "cubin":
            size = int(_check(nvrtc.nvrtcGetCUBINSize(prog), "get CUBIN size"))
            buf = _out_buffer(size)
            _check(nvrtc.nvrtcGetCUBIN(prog, buf), "get CUBIN")
        else:
            size = int(_check(nvrtc.nvrtcGetPTXSize(prog), "get PTX size"))
            buf = _out_buffer(size)
            _check(nvrtc.nvrtcGetPTX(prog, buf), "get PTX")
        return bytes(buf)
    finally:
        with contextlib.suppress(Exception):
            nvrtc.nvrtcDestroyProgram(prog)


def kernel_source(name: str) -> str:
    path = KERNEL_DIR / name
    if not path.is_file():
        raise RtmwEdgeError(f"CUDA kernel source not found: {path} (a broken install?)")
    return path.read_text()


def compile_kernel(name: str, arch: str, kind: str = "cubin", *, options: tuple[str, ...] = (),
                   use_cache: bool = True, directory: Path | None = None) -> CompiledKernel:
    """One of KERNEL_FILES for `arch` (sm_87 / compute_87), from the cache when it is there."""
    source = kernel_source(name)
    version = nvrtc_version()
    key = cache_key(source, tuple(options) + BASE_OPTIONS + (arch_option(kind, arch),), version, kind)
    label = f"{'sm' if kind == 'cubin' else 'compute'}_{arch.split('_', 1)[-1]}"
    path = None
    if use_cache:
        path = (directory or cache_dir()) / label / f"{Path(name).stem}-{key}.{kind}"
        if path.is_file():
            return CompiledKernel(name, label, kind, path.read_bytes(), path, True)
    image = compile_source(source, name, kind, arch, tuple(options))
    if path is not None:
        _atomic_write(path, image)
    return CompiledKernel(name, label, kind, image, path, False)


def compile_all(arch: str, kind: str = "cubin", **kwargs) -> dict[str, CompiledKernel]:
    """Every project kernel for one architecture."""
    return {name: compile_kernel(name, arch, kind, **kwargs) for name in KERNEL_FILES}


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:  # a read-only cache is not an error: the kernel is simply compiled again next time
        with contextlib.suppress(Exception):
            os.unlink(tmp)  # noqa: F821 - only bound when mkstemp succeeded

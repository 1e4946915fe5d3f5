"""The project's CUDA kernels run on the CPU: the unchanged `.cu` sources, compiled by the system C++ compiler
against a small CUDA shim, launched with exactly what the GPU path hands `cuLaunchKernel`.

- `cuda_host.h` maps the CUDA built-ins the kernels use onto the host: `threadIdx`/`blockIdx`/`blockDim`,
  `__syncthreads` (a real barrier over the block's live threads), `__shfl_sync`/`__shfl_down_sync` (a warp
  exchange), `__shared__` (the running block's storage), `atomicAdd` (atomic), device math (the C library).
- `launch.cpp` runs a grid block by block, each block's threads as fibers that switch only at barriers and
  shuffles, in ascending, descending or seeded-shuffled thread order (`order=`): a missing barrier reads
  another thread's data before it is written in at least one of the orders, and a barrier that can never open
  (divergent `__syncthreads`, a shuffle naming an exited lane) stops the launch with `HostLaunchError`.
- Each `.cu` file is one translation unit (as NVRTC compiles it), `-ffp-contract=off` (NVRTC `--fmad=false`).
  The library is built once per source/compiler/flags hash into `$RTMW_EDGE_HOME/host-kernels/` and reused.

`HostKernels` has `runtime.KernelModules`' interface, `launch(kernel, kernels.Launch, kernels.KernelArgs,
stream)`: the `void**` array of `KernelArgs` is unpacked by the kernel's own C++ signature (its parameter
count and sizes are checked against the packed values first) and device pointers are host addresses. The
launch also refuses what a GPU refuses: a block larger than the kernel's `__launch_bounds__` or 1024 threads,
grid dimensions past CUDA's limits.

What it cannot show: timing, memory coalescing, real warp divergence or preemption between barriers, and
CUDA's own `expf` (≤ 2 ulp) — the host's is glibc's (< 1 ulp). `sanitize="address,undefined"` builds the
AddressSanitizer + UBSan variant (the process must have libasan preloaded; see tests/test_cuda_host.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ...downloads import home_dir
from ...errors import RtmwEdgeError
from ..kernels import SIGNATURES
from ..nvrtc import KERNEL_DIR, KERNEL_FILES

SHIM_DIR = Path(__file__).resolve().parent
SHIM_FILES = ("cuda_host.h", "launch.cpp")
ORDERS = {"ascending": 0, "descending": 1, "shuffled": 2}
BASE_FLAGS = ("-std=c++17", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-U_FORTIFY_SOURCE", "-Wall",
              "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable")
OPT_FLAGS = ("-O2",)
SANITIZERS = {
    # float-cast-overflow is not part of -fsanitize=undefined in GCC: it catches NaN/inf → int conversions
    "address,undefined": ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined,float-cast-overflow",
                          "-fno-sanitize-recover=all"),
}
SANITIZE_ENV = "RTMW_EDGE_HOST_SANITIZE"


class HostCompilerError(RtmwEdgeError):
    """The host shim cannot be built (no C++ compiler, or a kernel that does not compile for the host)."""


class HostLaunchError(RtmwEdgeError):
    """A launch the GPU would refuse, or a kernel that deadlocks at a barrier."""


def compiler() -> str:
    """$CXX, else g++ / c++ on PATH."""
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise HostCompilerError("running the CUDA kernels on the CPU needs a C++17 compiler: apt-get install g++ "
                            "(or set CXX)")


def project_sources() -> dict[Path, tuple[str, ...]]:
    """Every project kernel file → the kernels it defines (from kernels.SIGNATURES)."""
    return {KERNEL_DIR / name: tuple(k for k, (src, _) in SIGNATURES.items() if src == name) for name in KERNEL_FILES}


_BOUNDS = re.compile(r"__launch_bounds__\s*\(\s*(\d+)[^)]*\)\s*(\w+)\s*\(")


def launch_bounds(sources) -> dict[str, int]:
    """kernel → max threads per block from `__launch_bounds__(N)` in the sources."""
    out = {}
    for path in sources:
        for match in _BOUNDS.finditer(Path(path).read_text()):
            out[match.group(2)] = int(match.group(1))
    return out


def _unit(path: Path, kernels: tuple[str, ...]) -> str:
    lines = ['#include "cuda_host.h"', f'#include "{path}"']
    lines += [f"RTMW_HOST_KERNEL({k})" for k in kernels]
    return "\n".join(lines) + "\n"


@functools.cache
def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise HostCompilerError(f"{cxx} does not run ({type(exc).__name__})") from None
    return out.splitlines()[0] if out else cxx


def library_key(sources: dict[Path, tuple[str, ...]], flags: tuple[str, ...], cxx: str) -> str:
    """Hash of everything that changes the built library."""
    digest = hashlib.sha256()
    parts = [cxx, _compiler_version(cxx), "\0".join(flags)]
    parts += [(SHIM_DIR / f).read_text() for f in SHIM_FILES]
    for path, kernels in sorted(sources.items()):
        parts += [str(path), Path(path).read_text(), ",".join(kernels)]
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x1f")
    return digest.hexdigest()[:20]


def cache_dir() -> Path:
    return home_dir() / "host-kernels"


def _compile(cxx: str, flags: tuple[str, ...], source: Path, obj: Path) -> None:
    cmd = [cxx, *flags, "-I", str(SHIM_DIR), "-c", str(source), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:300])
        raise HostCompilerError(f"the host shim does not compile {source.name}: {first}")


def _plan(sources, sanitize):
    sources = {Path(p).resolve(): tuple(k) for p, k in (sources or project_sources()).items()}
    if sanitize is not None and sanitize not in SANITIZERS:
        raise HostCompilerError(f"unknown sanitizer set {sanitize!r}; choose one of {', '.join(SANITIZERS)}")
    flags = BASE_FLAGS + (SANITIZERS[sanitize] if sanitize else OPT_FLAGS)
    cxx = compiler()
    key = library_key(sources, flags, cxx)
    name = f"librtmw_host-{key}{'-' + sanitize.replace(',', '-') if sanitize else ''}.so"
    return sources, flags, cxx, name


def build_library(sources: dict[Path, tuple[str, ...]] | None = None, *, sanitize: str | None = None,
                  directory: Path | None = None) -> Path:
    """The shared library of `sources` (default: the project's kernels), built once per key and cached."""
    sources, flags, cxx, name = _plan(sources, sanitize)
    folder = directory or cache_dir()
    path = folder / name
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtmw-host-", dir=folder) as tmp:
        tmp = Path(tmp)
        units = [(tmp / f"unit_{i}_{p.stem}.cpp", _unit(p, k)) for i, (p, k) in enumerate(sorted(sources.items()))]
        for unit, text in units:
            unit.write_text(text)
        todo = [(u, tmp / (u.stem + ".o")) for u, _ in units] + [(SHIM_DIR / "launch.cpp", tmp / "launch.o")]
        with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as pool:
            for future in [pool.submit(_compile, cxx, flags, src, obj) for src, obj in todo]:
                future.result()
        out = tmp / path.name
        link = [cxx, *flags, "-shared", "-o", str(out), *(str(o) for _, o in todo)]
        proc = subprocess.run(link, capture_output=True, text=True)
        if proc.returncode != 0:
            raise HostCompilerError(f"linking the host shim failed: {proc.stderr.strip()[:300]}")
        os.replace(out, path)  # atomic: concurrent builders at worst build twice
    return path


_LOADED: dict[str, ctypes.CDLL] = {}   # library file name (it carries the key) → loaded library


def load_library(sources: dict[Path, tuple[str, ...]] | None = None, *, sanitize: str | None = None) -> ctypes.CDLL:
    """The built library, loaded once per process."""
    name = _plan(sources, sanitize)[3]
    if name not in _LOADED:
        lib = ctypes.CDLL(str(build_library(sources, sanitize=sanitize)))
        lib.rtmw_host_launch.restype = ctypes.c_int
        lib.rtmw_host_launch.argtypes = [ctypes.c_char_p, *[ctypes.c_uint] * 6, ctypes.c_void_p, ctypes.c_int,
                                         ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_int]
        lib.rtmw_host_kernel_params.restype = ctypes.c_int
        lib.rtmw_host_kernel_params.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        _LOADED[name] = lib
    return _LOADED[name]


class HostKernels:
    """`runtime.KernelModules` on the CPU (see the module docstring). `device` is accepted and ignored."""

    def __init__(self, device=None, *, order: str = "ascending", seed: int = 0, sanitize: str | None = None,
                 sources: dict[Path, tuple[str, ...]] | None = None) -> None:
        if order not in ORDERS:
            raise RtmwEdgeError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
        self.order, self.seed = order, int(seed)
        sanitize = sanitize if sanitize is not None else (os.environ.get(SANITIZE_ENV) or None)
        srcs = sources or project_sources()
        self.library = load_library(srcs, sanitize=sanitize)
        self.bounds = launch_bounds(srcs)
        self.launches: list[tuple[str, tuple, tuple]] = []
        self._sizes: dict[str, list[int]] = {}

    def _check_params(self, kernel: str, args) -> None:
        """The packed values must be the .cu parameters, one by one (count and byte size), on every launch."""
        if kernel not in self._sizes:
            sizes = (ctypes.c_int * 64)()
            count = self.library.rtmw_host_kernel_params(kernel.encode(), sizes, 64)
            if count < 0:
                raise HostLaunchError(f"no kernel {kernel!r} in the host library")
            self._sizes[kernel] = list(sizes[:count])
        want = self._sizes[kernel]
        packed = [ctypes.sizeof(v) for v in args.values]
        if packed != want:
            raise HostLaunchError(f"{kernel}: the .cu takes {len(want)} parameters of {want} bytes, "
                                  f"the Python side packs {len(packed)} of {packed} bytes")

    def launch(self, kernel: str, launch, args, stream=None) -> None:
        """Run `kernel` over `launch.grid` × `launch.block` with the packed `args` (returns when done)."""
        if args.kernel != kernel:
            raise RtmwEdgeError(f"arguments packed for {args.kernel}, launched as {kernel}")
        self._check_params(kernel, args)
        threads = launch.block[0] * launch.block[1] * launch.block[2]
        bound = self.bounds.get(kernel)
        if bound is not None and threads > bound:
            raise HostLaunchError(f"{kernel}: block of {threads} threads exceeds its __launch_bounds__({bound})")
        error = ctypes.create_string_buffer(1024)
        self.launches.append((kernel, tuple(launch.grid), tuple(launch.block)))
        rc = self.library.rtmw_host_launch(kernel.encode(), *launch.grid, *launch.block, args.address,
                                           ORDERS[self.order], self.seed, error, len(error))
        if rc != 0:
            raise HostLaunchError(error.value.decode(errors="replace"))

    def close(self) -> None:
        pass


def asan_runtime() -> str | None:
    """Path of the compiler's AddressSanitizer runtime (to LD_PRELOAD into a Python that loads the
    sanitized library), or None."""
    with contextlib.suppress(HostCompilerError, OSError, subprocess.SubprocessError):
        out = subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        if out and os.path.isabs(out) and os.path.exists(out):
            return out
    return None

"""An emulated CUDA runtime for the tests: the GPU pipeline's streams, events, copies, kernels, engine enqueues
and graphs run *asynchronously* on the CPU, so a missing wait or a misplaced event fails a test.

It stands in for cuda-python (`cuda.bindings.runtime` / `.driver`) underneath `rtmw_edge.cuda.runtime`, so the
project's own runtime layer runs unchanged; every call is bound to the real binding's signature first (a call
cuda-python would refuse with a TypeError fails here too). Device memory is host memory (pointers are real
addresses, kernels run on the host shim — the unchanged `.cu` sources — and engines on ONNX Runtime / PyTorch
CPU). What makes it a test of *ordering*:

- **Deferred work.** Kernel launches, copies, memsets, engine enqueues, event records and graph launches are
  queued per stream; nothing runs when it is enqueued. When the host waits (stream/event/device synchronize, a
  successful event query), the ready heads of the streams run in a seeded interleaving that respects stream order,
  event waits and the legacy default stream's implicit barriers; policy "lazy" runs only what the host waited
  for, policy "eager" lets the GPU run ahead by a random amount as well.
- **Poison.** A copy (or a kernel write) into pinned host memory poisons its destination when it is queued
  (bytes 0xFF: NaN as float32, −1 as int32) and fills it when it runs, so a host read before the wait sees
  poison, not last frame's plausible values. The source of a queued host→device copy must not change before
  the copy runs (the host wrote a buffer the GPU had not read yet). Freed memory is poisoned; queued work that
  touches it is an error.
- **Happens-before.** Every operation declares the byte ranges it reads and writes — kernels from the
  parameter list of their `.cu` signature (`const T*` read, `T*` written) with sizes from the launch arguments,
  copies and memsets from their arguments, engines from their bindings plus one synthetic "scratch" range per
  execution context that every enqueue writes. Vector clocks over streams and the host order them (stream order,
  event record → wait, host waits); two accesses to overlapping bytes, one a write, that nothing orders raise
  `EmulationError` naming both operations and where they were enqueued.
- **Graph capture** follows CUDA's rules: work on a capturing stream is recorded, not run; synchronising it,
  querying/synchronising/timing an event last recorded in a capture (cudaErrorCapturedEvent), allocating or
  freeing during a global/thread-local capture, and touching the legacy stream all fail as CUDA fails them (and
  invalidate the capture). A launched graph replays the recorded operations.

`Emulator(seed, policy, integrated=...)`; `install(monkeypatch)` puts it under `rtmw_edge.cuda.runtime` (and the
NVRTC compile, and TensorRT's stand-in when one is given). `torch.cuda._sanitizer` (PyTorch's CUDA sanitizer) is
the model of the idea; this is written for this project's runtime.
"""

from __future__ import annotations

import ctypes
import hashlib
import inspect
import itertools
import random
import re
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtmw_edge.cuda import kernels as KK

POISON = 0xFF
KERNEL_DIR = Path(__file__).resolve().parents[1] / "rtmw_edge" / "kernels"
SYNTHETIC_BASE = 1 << 56          # synthetic address space (context scratch): never real memory
_real_rt = _real_drv = None


def real_bindings():
    """The installed cuda-python bindings (they import without a GPU): their signatures and enums."""
    global _real_rt, _real_drv
    if _real_rt is None:
        from cuda.bindings import driver, runtime

        _real_rt, _real_drv = runtime, driver
    return _real_rt, _real_drv


_HANDLE_BASES = itertools.count(0x7000, 0x1000000)

class EmulationError(BaseException):
    """A CUDA rule the code under test broke (an unordered access, a read of freed memory, ...). A BaseException,
    so no `except Exception` in the code under test (cleanup paths suppress errors) can swallow it."""


# --------------------------------------------------------------------------------------------- kernel footprints
def _kernel_params() -> dict[str, list[tuple[str, bool | None]]]:
    """kernel → [(parameter, written?)] from the `.cu` sources: pointers declared `const T*` are read,
    other pointers are written (and maybe read); None for scalars."""
    out = {}
    for path in sorted(KERNEL_DIR.glob("*.cu")):
        text = path.read_text()
        for match in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)",
                                 text):
            params = []
            for decl in match.group(2).split(","):
                decl = " ".join(decl.split())
                name = re.findall(r"(\w+)\s*$", decl)[0]
                params.append((name, None if "*" not in decl else not decl.startswith("const")))
            out[match.group(1)] = params
    return out


KERNEL_PARAMS = _kernel_params()


def kernel_footprint(kernel: str, a: dict) -> dict[str, int]:
    """Bytes each pointer parameter of `kernel` touches for the launch arguments `a` (0: not touched)."""
    f4 = 4
    if kernel == "letterbox_bgr_to_nchw":
        return {"src": (a["src_h"] - 1) * a["src_pitch"] + 3 * a["src_w"], "dst": 3 * a["dst_w"] * a["dst_h"] * f4}
    if kernel == "rtmdet_rawhead_decode":
        n = sum(a[f"h{i}"] * a[f"w{i}"] for i in range(3))
        fp = {f"level{i}": a[f"h{i}"] * a[f"w{i}"] * 5 * f4 for i in range(3)}
        return {**fp, "boxes": 16 * n, "scores": 4 * n}
    if kernel == "detector_select":
        k = a["num_candidates"]
        return {"boxes": 16 * k, "scores": 4 * k, "work": KK.nms_scratch_bytes(k), "out_boxes": 16 * a["max_persons"],
                "out_scores": 4 * a["max_persons"], "header": 16}
    if kernel == "crop_persons_bgr_to_nchw":
        n = a["num_persons"]
        return {"src": (a["src_h"] - 1) * a["src_pitch"] + 3 * a["src_w"] if n else 0, "boxes": 16 * n,
                "dst": n * 3 * a["dst_w"] * a["dst_h"] * f4, "params": 16 * n}
    if kernel == "simcc_decode_to_image":
        nk = a["num_persons"] * a["num_keypoints"]
        return {"simcc_x": nk * a["bins_x"] * f4, "simcc_y": nk * a["bins_y"] * f4, "simcc_z": nk * a["bins_z"] * f4,
                "params": 16 * a["num_persons"], "out": 12 * nk, "out3d": 12 * nk}
    if kernel == "decoded_to_image":
        nk = a["num_persons"] * a["num_keypoints"]
        return {"keypoints": 8 * nk, "scores": 4 * nk, "z": 4 * nk, "params": 16 * a["num_persons"],
                "out": 12 * nk, "out3d": 12 * nk}
    raise EmulationError(f"no footprint for kernel {kernel}")


# --------------------------------------------------------------------------------------------- model
@dataclass(eq=False)
class Allocation:
    base: int
    size: int
    kind: str                      # device | pinned | mapped | synthetic
    buffer: object = None          # keeps the host memory alive (never released: freed memory stays readable)
    freed: bool = False
    label: str = ""


@dataclass(eq=False)
class Op:
    seq: int                       # global enqueue order
    stream: EmuStream
    kind: str                      # kernel | copy | memset | engine | record | wait | graph
    name: str
    run: object = None             # callable executed when the op runs
    accesses: list = field(default_factory=list)   # (lo, hi, write)
    deps: list = field(default_factory=list)       # ops (other streams) that must be done first
    clock: dict = field(default_factory=dict)
    lane_seq: int = 0
    done: bool = False
    where: str = ""
    checksums: list = field(default_factory=list)  # (lo, hi, digest) of sources that must not change
    fills: list = field(default_factory=list)      # pinned destinations poisoned at enqueue

    def describe(self) -> str:
        return f"{self.name} on stream {self.stream.label} (enqueued at {self.where})"


@dataclass(eq=False)
class EmuStream:
    handle: int
    lane: int
    blocking: bool
    label: str
    queue: deque = field(default_factory=deque)
    clock: dict = field(default_factory=dict)
    last: Op | None = None
    capture: Capture | None = None
    destroyed: bool = False
    device: int = 0


@dataclass(eq=False)
class EmuEvent:
    handle: int
    timing: bool
    blocking: bool
    op: Op | None = None           # the record op (None: never recorded)
    clock: dict = field(default_factory=dict)
    captured: bool = False         # last recorded inside a capture
    time: float = 0.0
    destroyed: bool = False


@dataclass(eq=False)
class Capture:
    stream: EmuStream
    mode: int
    thread: int
    nodes: list = field(default_factory=list)      # (kind, name, run, accesses, checksums, fills)
    invalid: str | None = None


def _caller() -> str:
    """Where the code under test enqueued the work: the innermost rtmw_edge frame outside the CUDA wrappers (else
    the innermost test frame)."""
    fallback = "?"
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\", "/")
        if "/rtmw_edge/" in path and not path.endswith("/cuda/runtime.py"):
            return f"{path.split('/rtmw_edge/')[-1]}:{frame.lineno} {frame.name}"
        if fallback == "?" and "/tests/" in path and not path.endswith(("emulated_cuda.py", "fake_tensorrt.py")):
            fallback = f"{path.split('/tests/')[-1]}:{frame.lineno} {frame.name}"
    return fallback


def _join(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if out.get(k, 0) < v:
            out[k] = v
    return out


def _view(ptr: int, nbytes: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), np.uint8) if nbytes else np.zeros(0, np.uint8)


# --------------------------------------------------------------------------------------------- the emulator
class Emulator:
    """One emulated GPU. See the module docstring."""

    def __init__(self, seed: int = 0, policy: str = "eager", *, integrated: bool = False, name: str = "EmulatedGPU",
                 capability: tuple[int, int] = (8, 7), total_memory: int = 8 << 30, kernel_runner=None,
                 devices: int = 1) -> None:
        if policy not in ("eager", "lazy"):
            raise ValueError(policy)
        self.rng = random.Random(seed)
        self.seed, self.policy = seed, policy
        self.integrated, self.name, self.capability, self.total_memory = integrated, name, capability, total_memory
        self.allocations: dict[int, Allocation] = {}
        self._bases: list[int] = []
        self.streams: dict[int, EmuStream] = {}
        self.events: dict[int, EmuEvent] = {}
        self.graphs: dict[int, list] = {}
        self.execs: dict[int, list] = {}
        self.modules: dict[int, str] = {}
        self.functions: dict[int, str] = {}
        self.records: list[tuple[int, int, bool, Op]] = []   # shadow accesses not yet ordered before the host
        self.host: dict = {}
        self._next = next(_HANDLE_BASES)      # handles unique across emulators: a stale object's destroy
                                              # (a garbage-collected engine of an earlier test) names no live one
        self._seq = 0
        self._lanes = 0
        self._synthetic = SYNTHETIC_BASE
        self.devices = int(devices)
        self._tls = threading.local()           # cudaSetDevice is per host thread (default: device 0)
        self.stats = {"host_waits": 0, "pageable_copies": 0, "graph_launches": 0, "captures": 0, "ops": 0}
        self.log: list[str] = []                              # every API call, in order (tests read it)
        self.legacy = self._new_stream(0, blocking=True, label="legacy")
        self._kernels = None
        self.kernel_runner = kernel_runner      # (kernel, Launch, values) -> None; default: the host shim
        self.launched: list[tuple[str, dict]] = []   # every kernel as it ran (graph replays included)
        self.runtime = _Runtime(self)
        self.driver = _Driver(self)

    # ------------------------------------------------------------------ plumbing
    def install(self, monkeypatch, trt=None) -> Emulator:
        """Put the emulator under rtmw_edge.cuda.runtime (and NVRTC); `trt`: a fake tensorrt module to attach."""
        from rtmw_edge.cuda import nvrtc
        from rtmw_edge.cuda import runtime as R

        monkeypatch.setattr(R, "_MODULES", None)
        monkeypatch.setattr(R, "cuda_modules", lambda: (self.driver, self.runtime))
        monkeypatch.setattr(nvrtc, "supported_archs", lambda: [72, 75, 80, 86, 87, 89, 90])
        monkeypatch.setattr(nvrtc, "compile_kernel", lambda name, arch, kind="cubin", **kw: nvrtc.CompiledKernel(
            name, arch, kind, b"emulated:" + name.encode(), None, False))
        if trt is not None:
            trt._emulator = self
        return self

    def _handle(self) -> int:
        self._next += 0x10
        return self._next

    @property
    def current_device(self) -> int:
        return getattr(self._tls, "device", 0)

    def _new_stream(self, handle: int, blocking: bool, label: str) -> EmuStream:
        self._lanes += 1
        s = EmuStream(handle, self._lanes, blocking, label, device=self.current_device)
        self.streams[handle] = s
        return s

    def stream(self, handle) -> EmuStream:
        h = int(handle)
        if h in (0, 1):                     # 0 and cudaStreamLegacy (1): the legacy default stream
            return self.legacy
        s = self.streams.get(h)
        if s is None or s.destroyed:
            raise _CudaFail("cudaErrorInvalidResourceHandle", f"stream {h:#x} is not a live stream")
        return s

    def kernels(self):
        if self._kernels is None:
            from rtmw_edge.cuda.host import HostKernels

            self._kernels = HostKernels(order="shuffled" if self.seed % 2 else "ascending", seed=self.seed)
        return self._kernels

    # ------------------------------------------------------------------ memory
    def allocate(self, size: int, kind: str, label: str = "") -> int:
        size = max(int(size), 1)
        buf = ctypes.create_string_buffer(size + 256)
        base = (ctypes.addressof(buf) + 255) // 256 * 256      # cudaMalloc's alignment
        ctypes.memset(base, 0xAB, size)                      # garbage, as fresh device memory holds
        alloc = Allocation(base, size, kind, buf, label=label)
        self.allocations[base] = alloc
        self._bases = sorted(self.allocations)
        return base

    def synthetic(self, size: int, label: str) -> int:
        """A range of the synthetic address space (an execution context's scratch): ordered, never touched."""
        base = self._synthetic
        self._synthetic += (int(size) + 0xFFFF) // 0x10000 * 0x10000
        self.allocations[base] = Allocation(base, int(size), "synthetic", label=label)
        self._bases = sorted(self.allocations)
        return base

    def find(self, ptr: int) -> Allocation | None:
        import bisect

        i = bisect.bisect_right(self._bases, ptr) - 1
        if i < 0:
            return None
        alloc = self.allocations[self._bases[i]]
        return alloc if ptr < alloc.base + alloc.size else None

    def free(self, ptr: int, kinds: tuple[str, ...]) -> None:
        alloc = self.allocations.get(int(ptr))
        if alloc is None or alloc.kind not in kinds or alloc.freed:
            raise _CudaFail("cudaErrorInvalidValue", f"free of {int(ptr):#x}: not a live {'/'.join(kinds)} allocation")
        pending = [op for s in self.streams.values() for op in s.queue if self._touches(op, alloc)]
        if pending:
            raise EmulationError(f"freed {alloc.kind} memory {alloc.base:#x} ({alloc.label}) that queued work still "
                                 f"uses: {pending[0].describe()}")
        ctypes.memset(alloc.base, POISON, alloc.size)
        alloc.freed = True

    @staticmethod
    def _touches(op: Op, alloc: Allocation) -> bool:
        return any(lo < alloc.base + alloc.size and alloc.base < hi for lo, hi, _ in op.accesses)

    def _check_range(self, lo: int, hi: int, what: str) -> None:
        if hi <= lo:
            return
        alloc = self.find(lo)
        if alloc is None:
            return                                  # memory the emulator does not own (pageable host memory)
        if alloc.freed:
            raise EmulationError(f"{what} touches freed memory {alloc.base:#x} ({alloc.label})")
        if hi > alloc.base + alloc.size:
            raise EmulationError(f"{what} runs {hi - alloc.base - alloc.size} bytes past the end of the "
                                 f"{alloc.size}-byte allocation {alloc.base:#x} ({alloc.label})")

    def host_visible(self, lo: int) -> bool:
        alloc = self.find(lo)
        return alloc is not None and alloc.kind in ("pinned", "mapped")

    # ------------------------------------------------------------------ enqueueing
    def enqueue(self, stream_handle, kind: str, name: str, run=None, *, reads=(), writes=(), deps=()) -> Op | None:
        """Queue one operation (or record it, when the stream is capturing). reads/writes: (ptr, nbytes)."""
        s = self.stream(stream_handle)
        if s is not self.legacy and s.device != self.current_device:
            raise _CudaFail("cudaErrorInvalidResourceHandle", f"{name}: stream {s.label} belongs to device {s.device}, "
                            f"the calling thread's current device is {self.current_device}")
        accesses = [(int(p), int(p) + int(n), False) for p, n in reads if n] + \
                   [(int(p), int(p) + int(n), True) for p, n in writes if n]
        where = _caller()
        for lo, hi, _ in accesses:
            self._check_range(lo, hi, f"{name} (enqueued at {where})")
        checksums = [(lo, hi, hashlib.blake2b(_view(lo, hi - lo)).digest()) for lo, hi, w in accesses
                     if not w and self.host_visible(lo)]
        fills = [(lo, hi) for lo, hi, w in accesses if w and self.host_visible(lo)]
        if s.capture is not None:
            self._capture_guard(s)
            s.capture.nodes.append((kind, name, run, accesses, where))
            return None
        self._capture_legacy_guard(s)
        return self._queue(s, kind, name, run, accesses, list(deps), where, checksums, fills)

    def _queue(self, s: EmuStream, kind, name, run, accesses, deps, where, checksums, fills) -> Op:
        self._seq += 1
        deps = [d for d in deps if d is not None and not d.done]
        clock = _join(s.clock, self.host)
        for d in deps:
            clock = _join(clock, d.clock)
        if s is self.legacy:                           # the legacy stream waits for every blocking stream
            for other in self.streams.values():
                if other.blocking and other is not s and other.last is not None:
                    deps.append(other.last)
                    clock = _join(clock, other.last.clock)
        elif s.blocking and self.legacy.last is not None:   # ... and they wait for it
            deps.append(self.legacy.last)
            clock = _join(clock, self.legacy.last.clock)
        clock[s.lane] = clock.get(s.lane, 0) + 1
        op = Op(self._seq, s, kind, name, run, accesses, [d for d in deps if not d.done], clock, clock[s.lane],
                where=where, checksums=checksums, fills=fills)
        self._race_check(op)
        for lo, hi in fills:
            ctypes.memset(lo, POISON, hi - lo)
        s.queue.append(op)
        s.clock, s.last = clock, op
        self.stats["ops"] += 1
        return op

    @staticmethod
    def _hb(a: Op, clock: dict) -> bool:
        return clock.get(a.stream.lane, 0) >= a.lane_seq

    def _race_check(self, op: Op) -> None:
        for lo, hi, write in op.accesses:
            for rlo, rhi, rwrite, other in self.records:
                if rlo < hi and lo < rhi and (write or rwrite) and not self._hb(other, op.clock):
                    raise EmulationError(
                        f"data race on [{max(lo, rlo):#x}, {min(hi, rhi):#x}) "
                        f"({self._label(lo)}): {'write' if write else 'read'} by {op.describe()} is not ordered "
                        f"after the {'write' if rwrite else 'read'} by {other.describe()} — no event, stream "
                        "order or host wait between them")
        self.records.extend((lo, hi, w, op) for lo, hi, w in op.accesses)

    def _label(self, ptr: int) -> str:
        alloc = self.find(ptr)
        return f"{alloc.kind} {alloc.label}".strip() if alloc else "host memory"

    # ------------------------------------------------------------------ capture rules
    def capturing(self) -> list[Capture]:
        return [s.capture for s in self.streams.values() if s.capture is not None]

    def _capture_guard(self, s: EmuStream) -> None:
        if s.capture.invalid:
            raise _CudaFail("cudaErrorStreamCaptureInvalidated", f"capture on {s.label} already invalid")

    def _capture_legacy_guard(self, s: EmuStream) -> None:
        if s is self.legacy and any(c.mode != 2 for c in self.capturing()):
            for c in self.capturing():
                c.invalid = "the legacy stream was used during the capture"
            raise _CudaFail("cudaErrorStreamCaptureImplicit", "legacy stream used while a stream captures")

    def unsafe_call(self, what: str) -> None:
        """An API call CUDA prohibits in this thread while a global/thread-local capture is under way."""
        me = threading.get_ident()
        for c in self.capturing():
            if c.mode == 0 or (c.mode == 1 and c.thread == me):
                c.invalid = f"{what} during the capture"
                raise _CudaFail("cudaErrorStreamCaptureUnsupported", f"{what} while {c.stream.label} captures")

    # ------------------------------------------------------------------ execution
    def _ready(self, op: Op) -> bool:
        return all(d.done for d in op.deps)

    def _execute(self, op: Op) -> None:
        s = op.stream
        assert s.queue and s.queue[0] is op
        for lo, hi, _ in op.accesses:
            self._check_range(lo, hi, op.describe())
        for lo, hi, digest in op.checksums:
            if hashlib.blake2b(_view(lo, hi - lo)).digest() != digest:
                raise EmulationError(f"the host changed [{lo:#x}, {hi:#x}) ({self._label(lo)}) while "
                                     f"{op.describe()} was queued to read it — no wait before reusing the buffer")
        s.queue.popleft()
        if op.run is not None:
            run, op.run = op.run, None        # done work keeps no references (to engines' contexts, buffers)
            run()
        op.done = True
        self.time_tick(op)

    def time_tick(self, op: Op) -> None:
        self._clock_ms = getattr(self, "_clock_ms", 0.0) + 0.125

    def _closure(self, targets: list[Op]) -> set:
        need, todo = set(), list(targets)
        while todo:
            op = todo.pop()
            if op in need or op.done:
                continue
            need.add(op)
            q = op.stream.queue
            for other in q:
                if other is op:
                    break
                todo.append(other)
            todo.extend(op.deps)
        return need

    def run_until(self, targets: list[Op], why: str) -> None:
        """The host waits for `targets`: run ready work in a seeded order until they are done."""
        targets = [t for t in targets if t is not None and not t.done]
        need = self._closure(targets)
        while any(not t.done for t in targets):
            ready = [s.queue[0] for s in self.streams.values() if s.queue and self._ready(s.queue[0])]
            if self.policy == "lazy":
                ready = [op for op in ready if op in need]
            if not ready:
                raise EmulationError(f"{why}: the host waits forever (nothing ready; a wait on an event that is "
                                     "never recorded after?)")
            self._execute(self.rng.choice(ready))
        if self.policy == "eager":
            for _ in range(self.rng.randint(0, 6)):    # the GPU runs ahead of the host by a random amount
                ready = [s.queue[0] for s in self.streams.values() if s.queue and self._ready(s.queue[0])]
                if not ready:
                    break
                self._execute(self.rng.choice(ready))

    def host_waited(self, clock: dict) -> None:
        self.stats["host_waits"] += 1
        self.host = _join(self.host, clock)
        self.records = [r for r in self.records if not self._hb(r[3], self.host)]

    def drain(self) -> None:
        """Run everything queued (device synchronize)."""
        ops = [op for s in self.streams.values() for op in s.queue]
        self.run_until(ops, "cudaDeviceSynchronize")
        clock = {}
        for s in self.streams.values():
            clock = _join(clock, s.clock)
        self.host_waited(clock)

    def pending(self) -> list[Op]:
        return [op for s in self.streams.values() for op in s.queue]

    def leaks(self) -> dict[str, int]:
        """What is still allocated or alive (after everything was closed, all should be 0)."""
        return {"device": sum(1 for a in self.allocations.values() if a.kind == "device" and not a.freed),
                "pinned": sum(1 for a in self.allocations.values() if a.kind in ("pinned", "mapped") and not a.freed),
                "streams": sum(1 for s in self.streams.values() if s is not self.legacy and not s.destroyed),
                "events": sum(1 for e in self.events.values() if not e.destroyed),
                "graphs": len(self.graphs), "graph_execs": len(self.execs)}

    # ------------------------------------------------------------------ external work (engines)
    def enqueue_engine(self, stream_handle, name: str, run, *, reads=(), writes=()) -> None:
        """An inference library's enqueue (TensorRT's execute_async_v3, a test engine): one op on the stream."""
        try:
            self.enqueue(stream_handle, "engine", name, run, reads=reads, writes=writes)
        except _CudaFail as fail:
            raise EmulationError(f"{name}: {fail.code}: {fail}") from None

    def is_capturing(self, stream_handle) -> bool:
        return self.stream(stream_handle).capture is not None


class _CudaFail(Exception):
    def __init__(self, code: str, why: str) -> None:
        super().__init__(why)
        self.code = code


# --------------------------------------------------------------------------------------------- runtime API
class _Api:
    """Calls are bound to the real cuda-python signature first, then emulated; failures become error codes."""

    module_index = 0

    def __init__(self, emu: Emulator) -> None:
        self._emu = emu

    def __getattr__(self, name):
        real = getattr(real_bindings()[self.module_index], name)
        if isinstance(real, type) or not callable(real):
            return real                                  # enums, structs, constants: the real ones
        impl = getattr(type(self), "_" + name, None)
        if impl is None:
            raise EmulationError(f"{name} is not emulated (add it to tests/emulated_cuda.py)")
        signature = inspect.signature(real)

        def call(*args, **kwargs):
            signature.bind(*args, **kwargs)              # TypeError where cuda-python raises one
            self._emu.log.append(name)
            try:
                values = impl(self, *args, **kwargs)
            except _CudaFail as fail:
                self._emu.log.append(f"{name} -> {fail.code}: {fail}")
                return (self._error(fail.code), None)
            values = values if isinstance(values, tuple) else (() if values is None else (values,))
            return (self._error(None), *values)
        return call


class _Runtime(_Api):
    module_index = 0

    def _error(self, code):
        err = real_bindings()[0].cudaError_t
        return err.cudaSuccess if code is None else getattr(err, code)

    # devices
    def _cudaGetDeviceCount(self):
        return self._emu.devices

    def _cudaSetDevice(self, device):
        if not 0 <= int(device) < self._emu.devices:
            raise _CudaFail("cudaErrorInvalidDevice", f"device {device}")
        self._emu._tls.device = int(device)

    def _cudaGetDevice(self):
        return self._emu.current_device

    def _cudaDeviceGetAttribute(self, attr, device):
        a = real_bindings()[0].cudaDeviceAttr
        values = {a.cudaDevAttrComputeCapabilityMajor: self._emu.capability[0],
                  a.cudaDevAttrComputeCapabilityMinor: self._emu.capability[1],
                  a.cudaDevAttrIntegrated: int(self._emu.integrated), a.cudaDevAttrCanMapHostMemory: 1,
                  a.cudaDevAttrMultiProcessorCount: 8}
        if attr not in values:
            raise EmulationError(f"cudaDeviceGetAttribute({attr}) not emulated")
        return values[attr]

    def _cudaGetDeviceProperties(self, device):
        props = real_bindings()[0].cudaDeviceProp()
        props.name = self._emu.name.encode().ljust(256, b"\0")
        props.major, props.minor = self._emu.capability
        props.totalGlobalMem = self._emu.total_memory
        props.integrated = int(self._emu.integrated)
        props.canMapHostMemory = 1
        return props

    def _cudaDriverGetVersion(self):
        return 12090

    def _cudaRuntimeGetVersion(self):
        return 12090

    def _cudaDeviceSynchronize(self):
        self._emu.unsafe_call("cudaDeviceSynchronize")
        self._emu.drain()

    # memory
    def _cudaMalloc(self, size):
        if int(size) == 0:                         # cudaFree(0)-style context init goes through cudaFree
            return 0
        self._emu.unsafe_call("cudaMalloc")
        return self._emu.allocate(size, "device", _caller())

    def _cudaFree(self, ptr):
        if int(ptr) == 0:
            return None                            # initialises the context; frees nothing
        self._emu.unsafe_call("cudaFree")
        self._emu.free(int(ptr), ("device",))

    def _cudaHostAlloc(self, size, flags):
        self._emu.unsafe_call("cudaHostAlloc")
        mapped = bool(int(flags) & int(real_bindings()[0].cudaHostAllocMapped))
        return self._emu.allocate(size, "mapped" if mapped else "pinned", _caller())

    def _cudaMallocHost(self, size):
        return self._cudaHostAlloc(size, 0)

    def _cudaFreeHost(self, ptr):
        self._emu.unsafe_call("cudaFreeHost")
        self._emu.free(int(ptr), ("pinned", "mapped"))

    def _cudaHostGetDevicePointer(self, host, flags):
        alloc = self._emu.find(int(host))
        if alloc is None or alloc.kind != "mapped":
            raise _CudaFail("cudaErrorInvalidValue", "not mapped pinned memory")
        return int(host)                           # unified addressing: the same address

    # copies
    def _memcpy(self, what, dst, src, count, kind, stream, rows=1, dpitch=None, spitch=None, width=None):
        emu = self._emu
        k = real_bindings()[0].cudaMemcpyKind
        dst, src, count = int(dst), int(src), int(count)
        width = count if width is None else int(width)
        dpitch, spitch = dpitch or width, spitch or width
        d_alloc, s_alloc = emu.find(dst), emu.find(src)
        host_kinds = (k.cudaMemcpyHostToDevice, k.cudaMemcpyDeviceToHost, k.cudaMemcpyHostToHost)
        pageable_src = s_alloc is None and kind in (k.cudaMemcpyHostToDevice, k.cudaMemcpyHostToHost)
        pageable_dst = d_alloc is None and kind in (k.cudaMemcpyDeviceToHost, k.cudaMemcpyHostToHost)
        if kind not in host_kinds and kind != k.cudaMemcpyDeviceToDevice:
            raise _CudaFail("cudaErrorInvalidMemcpyDirection", str(kind))
        if kind == k.cudaMemcpyHostToDevice and d_alloc is not None and d_alloc.kind != "device" \
                and d_alloc.kind != "mapped":
            raise _CudaFail("cudaErrorInvalidValue", "host-to-device copy into host memory")

        def run():
            for r in range(rows):
                ctypes.memmove(dst + r * dpitch, src + r * spitch, width)
        spans = lambda base, pitch: [(base + r * pitch, width) for r in range(rows)] if rows > 1 \
            else [(base, width)]  # noqa: E731
        if pageable_src or pageable_dst:
            # pageable host memory: CUDA stages it synchronously (the stream's earlier work first); counted,
            # because the pipeline must not do it on the hot path
            emu.stats["pageable_copies"] += 1
            s = emu.stream(stream)
            if s.capture is not None:
                emu._capture_guard(s)
                s.capture.invalid = "a copy from/to pageable memory"
                raise _CudaFail("cudaErrorStreamCaptureUnsupported", "pageable copy during capture")
            op = emu.enqueue(stream, "copy", f"{what} (pageable)", run, reads=spans(src, spitch),
                             writes=spans(dst, dpitch))
            emu.run_until([op], what)
            emu.host_waited(op.clock)
            return
        emu.enqueue(stream, "copy", what, run, reads=spans(src, spitch), writes=spans(dst, dpitch))

    def _cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if int(count):
            self._memcpy("cudaMemcpyAsync", dst, src, count, kind, stream)

    def _cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        self._memcpy("cudaMemcpy2DAsync", dst, src, int(width) * int(height), kind, stream, rows=int(height),
                     dpitch=int(dpitch), spitch=int(spitch), width=int(width))

    def _cudaMemsetAsync(self, dst, value, count, stream):
        dst, count, value = int(dst), int(count), int(value)
        self._emu.enqueue(stream, "memset", "cudaMemsetAsync", lambda: ctypes.memset(dst, value, count),
                          writes=[(dst, count)])

    # streams
    def _cudaStreamCreateWithFlags(self, flags):
        emu = self._emu
        h = emu._handle()
        nonblocking = int(flags) & int(real_bindings()[0].cudaStreamNonBlocking)
        emu._new_stream(h, blocking=not nonblocking, label=f"{h:#x}")
        return h

    def _cudaStreamCreate(self):
        return self._cudaStreamCreateWithFlags(0)

    def _cudaStreamCreateWithPriority(self, flags, priority):
        return self._cudaStreamCreateWithFlags(flags)

    def _cudaStreamDestroy(self, stream):
        s = self._emu.stream(stream)
        if s.capture is not None:
            raise _CudaFail("cudaErrorStreamCaptureUnsupported", "destroying a capturing stream")
        s.destroyed = True           # queued work still completes (CUDA: destroy returns at once)

    def _cudaStreamSynchronize(self, stream):
        emu = self._emu
        s = emu.stream(stream)
        if s.capture is not None:
            s.capture.invalid = "cudaStreamSynchronize of the capturing stream"
            raise _CudaFail("cudaErrorStreamCaptureUnsupported", "synchronize of a capturing stream")
        emu.unsafe_call("cudaStreamSynchronize")
        emu.run_until(list(s.queue), f"cudaStreamSynchronize({s.label})")
        emu.host_waited(s.clock)

    def _cudaStreamWaitEvent(self, stream, event, flags):
        emu = self._emu
        s, e = emu.stream(stream), self._event(event)
        if s.capture is not None:
            emu._capture_guard(s)
            if e.op is not None and not e.captured and not e.op.done:
                s.capture.invalid = "a wait on an event recorded outside the capture"
                raise _CudaFail("cudaErrorStreamCaptureIsolation", "external event waited inside a capture")
            return
        if e.op is None and not e.captured:
            return                                   # never recorded: nothing to wait for
        if e.captured:
            raise _CudaFail("cudaErrorStreamCaptureIsolation", "waiting outside a capture on a captured event")
        emu._queue(s, "wait", f"wait for event {e.handle:#x}", None, [], [e.op], _caller(), [], [])
        s.clock = _join(s.clock, e.clock)

    def _cudaStreamQuery(self, stream):
        s = self._emu.stream(stream)
        if s.queue:
            raise _CudaFail("cudaErrorNotReady", "work pending")
        self._emu.host_waited(s.clock)

    def _cudaStreamIsCapturing(self, stream):
        s = self._emu.stream(stream)
        st = real_bindings()[0].cudaStreamCaptureStatus
        if s.capture is None:
            return st.cudaStreamCaptureStatusNone
        return st.cudaStreamCaptureStatusInvalidated if s.capture.invalid else st.cudaStreamCaptureStatusActive

    # events
    def _event(self, event) -> EmuEvent:
        e = self._emu.events.get(int(event))
        if e is None or e.destroyed:
            raise _CudaFail("cudaErrorInvalidResourceHandle", f"event {int(event):#x}")
        return e

    def _cudaEventCreateWithFlags(self, flags):
        r = real_bindings()[0]
        h = self._emu._handle()
        self._emu.events[h] = EmuEvent(h, timing=not (int(flags) & int(r.cudaEventDisableTiming)),
                                       blocking=bool(int(flags) & int(r.cudaEventBlockingSync)))
        return h

    def _cudaEventCreate(self):
        return self._cudaEventCreateWithFlags(0)

    def _cudaEventDestroy(self, event):
        self._event(event).destroyed = True

    def _cudaEventRecord(self, event, stream):
        emu = self._emu
        e, s = self._event(event), emu.stream(stream)
        if s.capture is not None:
            emu._capture_guard(s)
            e.captured, e.op = True, None
            s.capture.nodes.append(("record", f"record {e.handle:#x}", None, [], _caller()))
            return
        emu._capture_legacy_guard(s)

        def stamp():
            e.time = emu._clock_ms if hasattr(emu, "_clock_ms") else 0.0
        e.op = emu._queue(s, "record", f"record event {e.handle:#x}", stamp, [], [], _caller(), [], [])
        e.clock, e.captured = e.op.clock, False

    def _captured_event_guard(self, e: EmuEvent, what: str) -> None:
        if e.captured:
            raise _CudaFail("cudaErrorCapturedEvent", f"{what} of an event last recorded in a capture")

    def _cudaEventSynchronize(self, event):
        emu, e = self._emu, self._event(event)
        self._captured_event_guard(e, "cudaEventSynchronize")
        emu.unsafe_call("cudaEventSynchronize")
        if e.op is not None:
            emu.run_until([e.op], f"cudaEventSynchronize({e.handle:#x})")
            emu.host_waited(e.clock)

    def _cudaEventQuery(self, event):
        emu, e = self._emu, self._event(event)
        self._captured_event_guard(e, "cudaEventQuery")
        if e.op is not None and not e.op.done and emu.policy == "eager" and emu.rng.random() < 0.5:
            emu.run_until([e.op], f"cudaEventQuery({e.handle:#x})")
        if e.op is not None and not e.op.done:
            raise _CudaFail("cudaErrorNotReady", "not yet")
        if e.op is not None:
            emu.host_waited(e.clock)

    def _cudaEventElapsedTime(self, start, end):
        a, b = self._event(start), self._event(end)
        for e in (a, b):
            self._captured_event_guard(e, "cudaEventElapsedTime")
        for e in (a, b):
            if not e.timing:
                raise _CudaFail("cudaErrorInvalidResourceHandle", "event created with cudaEventDisableTiming")
            if e.op is None or not e.op.done:
                raise _CudaFail("cudaErrorNotReady", "event not completed")
        return float(b.time - a.time)

    # graphs
    def _cudaStreamBeginCapture(self, stream, mode):
        emu = self._emu
        s = emu.stream(stream)
        if s is emu.legacy:
            raise _CudaFail("cudaErrorStreamCaptureUnsupported", "capture on the legacy stream")
        if s.capture is not None:
            raise _CudaFail("cudaErrorIllegalState", "already capturing")
        s.capture = Capture(s, int(mode), threading.get_ident())
        emu.stats["captures"] += 1

    def _cudaStreamEndCapture(self, stream):
        emu = self._emu
        s = emu.stream(stream)
        if s.capture is None:
            raise _CudaFail("cudaErrorIllegalState", "not capturing")
        cap, s.capture = s.capture, None
        if cap.invalid:
            raise _CudaFail("cudaErrorStreamCaptureInvalidated", cap.invalid)
        h = emu._handle()
        emu.graphs[h] = list(cap.nodes)
        return h

    def _cudaGraphInstantiate(self, graph, flags):
        emu = self._emu
        if int(graph) not in emu.graphs:
            raise _CudaFail("cudaErrorInvalidValue", "no such graph")
        h = emu._handle()
        emu.execs[h] = list(emu.graphs[int(graph)])
        return h

    def _cudaGraphLaunch(self, graph_exec, stream):
        emu = self._emu
        nodes = emu.execs.get(int(graph_exec))
        if nodes is None:
            raise _CudaFail("cudaErrorInvalidValue", "no such graph exec")
        accesses = [a for _, _, _, acc, _ in nodes for a in acc]

        def replay():
            for _, _, run, acc, where in nodes:
                for lo, hi, _ in acc:
                    emu._check_range(lo, hi, f"graph node enqueued at {where}")
                if run is not None:
                    run()
        emu.stats["graph_launches"] += 1
        names = ", ".join(n for k, n, *_ in nodes if k != "record")
        emu.enqueue(stream, "graph", f"graph [{names}]", replay,
                    reads=[(lo, hi - lo) for lo, hi, w in accesses if not w],
                    writes=[(lo, hi - lo) for lo, hi, w in accesses if w])

    def _cudaGraphExecDestroy(self, graph_exec):
        if self._emu.execs.pop(int(graph_exec), None) is None:
            raise _CudaFail("cudaErrorInvalidValue", "no such graph exec")

    def _cudaGraphDestroy(self, graph):
        if self._emu.graphs.pop(int(graph), None) is None:
            raise _CudaFail("cudaErrorInvalidValue", "no such graph")


# --------------------------------------------------------------------------------------------- driver API
class _Driver(_Api):
    module_index = 1

    def _error(self, code):
        res = real_bindings()[1].CUresult
        if code is None:
            return res.CUDA_SUCCESS
        name = {"cudaErrorInvalidValue": "CUDA_ERROR_INVALID_VALUE",
                "cudaErrorStreamCaptureInvalidated": "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
                "cudaErrorStreamCaptureImplicit": "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
                "cudaErrorStreamCaptureUnsupported": "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
                "cudaErrorInvalidResourceHandle": "CUDA_ERROR_INVALID_HANDLE"}.get(code, "CUDA_ERROR_UNKNOWN")
        return getattr(res, name)

    def _cuModuleLoadData(self, image):
        data = bytes(image)
        if not data.startswith(b"emulated:"):
            raise _CudaFail("cudaErrorInvalidValue", "not an emulated image")
        h = self._emu._handle()
        self._emu.modules[h] = data[len(b"emulated:"):].decode()
        return h

    def _cuModuleGetFunction(self, module, name):
        file = self._emu.modules.get(int(module))
        kernel = name.decode() if isinstance(name, bytes) else str(name)
        if file is None or kernel not in KERNEL_PARAMS or \
                not re.search(rf"\b{kernel}\s*\(", (KERNEL_DIR / file).read_text()):
            raise _CudaFail("cudaErrorInvalidValue", f"no kernel {kernel} in {file}")
        h = self._emu._handle()
        self._emu.functions[h] = kernel
        return h

    def _cuModuleUnload(self, module):
        self._emu.modules.pop(int(module), None)

    def _cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        emu = self._emu
        kernel = emu.functions.get(int(f))
        if kernel is None:
            raise _CudaFail("cudaErrorInvalidValue", "no such function")
        signature = KK.SIGNATURES[kernel][1]
        ctypes_of = {"p": ctypes.c_uint64, "i": ctypes.c_int32, "f": ctypes.c_float, "d": ctypes.c_double}
        array = (ctypes.c_void_p * len(signature)).from_address(int(params))
        values = {name: ctypes_of[code].from_address(array[i]).value for i, (name, code) in enumerate(signature)}
        fp = kernel_footprint(kernel, values)
        reads, writes = [], []
        for name, written in KERNEL_PARAMS[kernel]:
            if written is None or not values.get(name):
                continue
            (writes if written else reads).append((values[name], fp[name]))
        launch = KK.Launch((int(gx), int(gy), int(gz)), (int(bx), int(by), int(bz)), int(shared))

        def run():
            emu.launched.append((kernel, values))
            if emu.kernel_runner is not None:
                emu.kernel_runner(kernel, launch, values)
            else:
                emu.kernels().launch(kernel, launch, KK.KernelArgs(kernel, values))
        emu.enqueue(int(stream), "kernel", kernel, run, reads=reads, writes=writes)


# --------------------------------------------------------------------------------------------- engines
def OrtDeviceEngine(emu: Emulator, path, max_batch: int = 8) -> Deferred:  # noqa: N802 - reads as a class
    """The project's onnxruntime-gpu device engine on the CPU provider (its I/O binding over host pointers) as
    deferred work on the emulated streams — stands in for every non-TensorRT device engine (any ONNX runs)."""
    from rtmw_edge.backends.onnxruntime_gpu import OrtGpuEngine

    return Deferred(emu, OrtGpuEngine(path, device="cpu", max_batch=max_batch))


def TorchDeviceEngine(emu: Emulator, path, max_batch: int = 8) -> Deferred:  # noqa: N802
    """The project's PyTorch device engine (the zoo's module an export was made from) on torch device "cpu", as
    deferred work on the emulated streams."""
    from rtmw_edge.backends.torch_cuda import TorchCudaEngine

    return Deferred(emu, TorchCudaEngine(path, device="cpu", max_batch=max_batch))


class Deferred:
    """Any device engine of the project run on the CPU (the PyTorch engine on torch device "cpu", the
    onnxruntime-gpu engine on the CPU provider with its I/O binding over host pointers) as *deferred* work on the
    emulated streams: its context's `infer_async` is queued, declares the bytes it reads and writes (its bindings
    and a synthetic scratch range per context), and runs — the product's own binding code — only when the
    emulated GPU gets to it."""

    def __init__(self, emu: Emulator, engine) -> None:
        self.emu, self.engine = emu, engine
        self.contexts: list = []
        self.batches: list[int] = []
        self.closed = False

    def __getattr__(self, name):
        return getattr(self.__dict__["engine"], name)

    def close(self) -> None:
        """The engine's own close; `closed` tells a test that its owner released it."""
        self.closed = True
        if hasattr(self.engine, "close"):
            self.engine.close()

    def create_context(self, stream: int, scratch: int | None = None):
        ctx = _DeferredContext(self, self.engine.create_context(int(stream)), int(stream))
        self.contexts.append(ctx)
        return ctx


class _DeferredContext:
    def __init__(self, owner: Deferred, inner, stream: int) -> None:
        self.owner, self.inner, self.stream = owner, inner, stream
        self.scratch = owner.emu.synthetic(4096, f"scratch of {owner.engine.name} context on stream {stream:#x}")

    def infer_async(self, inputs: dict[str, int], outputs: dict[str, int], batch: int) -> None:
        eng = self.owner.engine
        for name, ptr in {**inputs, **outputs}.items():
            if int(ptr) % 256:
                raise EmulationError(f"{eng.name}: {name} at {int(ptr):#x} is not 256-byte aligned")
        self.owner.batches.append(batch)
        nbytes = int(np.prod(eng.input_shape(batch))) * 4
        writes = [(int(outputs[n]), int(np.prod(eng.output_shape(n, batch))) * np.dtype(eng.output_dtype(n)).itemsize)
                  for n in eng.output_names]
        inputs, outputs = dict(inputs), dict(outputs)
        self.owner.emu.enqueue_engine(self.stream, f"engine {eng.name}",
                                      lambda: self.inner.infer_async(inputs, outputs, batch),
                                      reads=[(int(inputs[eng.input_name]), nbytes)],
                                      writes=writes + [(self.scratch, 4096)])

    def close(self) -> None:
        self.inner.close()

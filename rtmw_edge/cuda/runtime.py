"""A thin, explicit CUDA layer on cuda-python: device, buffers, streams, events, copies, kernels, graphs.

Everything is a plain integer underneath (device pointers, stream and event handles), so buffers and
streams from CuPy, PyTorch or pycuda can be handed in (`as_device_pointer`, `as_stream_handle`) and ours
handed out. The runtime API (primary context, shared with PyTorch and TensorRT) does memory, streams,
events and graphs; the driver API loads the NVRTC images and launches kernels in that same context.

cuda-python is imported lazily: without it every entry point raises one `MissingDependencyError` line
naming the `gpu` extra, and the rest of the toolkit works as before. Every call goes through `check`,
which turns a non-success code into `CudaError("cudaMemcpyAsync: cudaErrorInvalidValue")`.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import MissingDependencyError, RtmwEdgeError
from . import nvrtc

GPU_HINT = "pip install 'rtmw-edge[gpu]'"


class CudaError(RtmwEdgeError):
    """A CUDA call that returned an error code (or a CUDA setup that cannot work here)."""


# --------------------------------------------------------------------------- bindings
_MODULES: tuple | None = None


def cuda_modules():
    """(driver, runtime) bindings of cuda-python: `cuda.bindings` (≥ 12.6), else the older `cuda` layout."""
    global _MODULES
    if _MODULES is None:
        try:
            from cuda.bindings import driver, runtime
        except ImportError:
            try:
                from cuda import cuda as driver  # type: ignore[no-redef]
                from cuda import cudart as runtime  # type: ignore[no-redef]
            except ImportError:
                raise MissingDependencyError(f"the GPU runtime needs cuda-python, which is not installed: "
                                             f"{GPU_HINT}") from None
        _MODULES = (driver, runtime)
    return _MODULES


def check(result, what: str):
    """Unpack a cuda-python result `(error, *values)`; raise CudaError naming the call and the error."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        raise CudaError(f"{what}: {getattr(err, 'name', f'error {int(err)}')}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _call(name: str, *args, api: str = "runtime"):
    driver, runtime = cuda_modules()
    fn = getattr(runtime if api == "runtime" else driver, name)
    try:
        result = fn(*args)
    except (MissingDependencyError, CudaError):
        raise
    except Exception as exc:  # the driver library itself is missing (cuda.pathfinder raises its own type)
        raise CudaError(f"{name}: no usable CUDA driver ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") \
            from None
    return check(result, name)


def rt(name: str, *args):
    """Call a runtime-API function by name, checked."""
    return _call(name, *args, api="runtime")


def drv(name: str, *args):
    """Call a driver-API function by name, checked."""
    return _call(name, *args, api="driver")


# --------------------------------------------------------------------------- device
@dataclass(frozen=True)
class Device:
    index: int
    name: str
    capability: tuple[int, int]
    total_memory: int
    integrated: bool = False      # cudaDevAttrIntegrated: a Jetson (host and GPU share DRAM)
    can_map_host: bool = True     # cudaDevAttrCanMapHostMemory: mapped pinned memory works

    @property
    def arch(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    def describe(self) -> str:
        return (f"{self.name} (compute {self.capability[0]}.{self.capability[1]}, "
                f"{self.total_memory / 2**30:.1f} GiB)")


def device_available(index: int = 0) -> tuple[bool, str]:
    """(True, description) when a CUDA device `index` can be used here, else (False, the reason)."""
    try:
        count = device_count()
    except RtmwEdgeError as exc:
        return False, str(exc)
    if count <= index:
        return False, f"no CUDA device {index} (found {count})"
    try:
        return True, get_device(index).describe()
    except RtmwEdgeError as exc:
        return False, str(exc)


def device_count() -> int:
    _, runtime = cuda_modules()
    try:
        result = runtime.cudaGetDeviceCount()
    except Exception as exc:
        raise CudaError(f"no usable CUDA driver ({type(exc).__name__})") from None
    err = result[0]
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        hint = {"cudaErrorInsufficientDriver": " (no NVIDIA driver, or one older than CUDA 12)",
                "cudaErrorNoDevice": " (no NVIDIA GPU visible)"}.get(name, "")
        raise CudaError(f"no usable CUDA device: {name}{hint}")
    return int(result[1])


def get_device(index: int = 0) -> Device:
    """Make device `index` current in this thread (its primary context, shared with PyTorch/TensorRT)."""
    _, runtime = cuda_modules()
    rt("cudaSetDevice", index)
    rt("cudaFree", 0)  # initialises the primary context now rather than at the first real call
    attr = runtime.cudaDeviceAttr
    major = rt("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMajor, index)
    minor = rt("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMinor, index)
    integrated = rt("cudaDeviceGetAttribute", attr.cudaDevAttrIntegrated, index)
    can_map = rt("cudaDeviceGetAttribute", attr.cudaDevAttrCanMapHostMemory, index)
    props = rt("cudaGetDeviceProperties", index)
    name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) else str(props.name)
    return Device(index, name, (int(major), int(minor)), int(props.totalGlobalMem), bool(integrated), bool(can_map))


def use_device(index: int) -> None:
    """Make the device's primary context current in the calling thread. The current device is per host thread:
    every public entry point of the GPU pipeline calls this first, so a worker thread (the daemon's, a
    framework's) never enqueues on another GPU's context by accident."""
    rt("cudaSetDevice", int(index))


# --------------------------------------------------------------------------- interop
def as_device_pointer(obj) -> int:
    """A device pointer from an int, a `__cuda_array_interface__` object (CuPy, Numba, PyTorch), a torch
    tensor (`data_ptr()`), a CuPy memory pointer (`.ptr`), a pycuda DeviceAllocation or a cuda-python
    CUdeviceptr (`int()`), or one of our buffers."""
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (DeviceBuffer, DeviceView)):
        return obj.ptr
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        return int(cai["data"][0])
    if hasattr(obj, "data_ptr"):
        return int(obj.data_ptr())
    if hasattr(obj, "ptr"):
        return int(obj.ptr)
    try:
        return int(obj)
    except (TypeError, ValueError):
        raise RtmwEdgeError(f"cannot get a device pointer from {type(obj).__name__}") from None


def as_stream_handle(obj) -> int:
    """A cudaStream_t/CUstream handle from an int (0 = legacy default stream), our Stream, a torch
    `torch.cuda.Stream` (`.cuda_stream`), a CuPy stream (`.ptr`), a pycuda stream (`.handle`) or a
    cuda-python CUstream / cudaStream_t (`int()`)."""
    if obj is None:
        return 0
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    for attr in ("handle", "cuda_stream", "ptr"):
        value = getattr(obj, attr, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    try:
        return int(obj)
    except (TypeError, ValueError):
        pass
    getptr = getattr(obj, "getPtr", None)  # cuda-python handle objects
    if getptr is not None:
        return int(getptr())
    raise RtmwEdgeError(f"cannot get a CUDA stream handle from {type(obj).__name__}")


# --------------------------------------------------------------------------- memory
class DeviceView:
    """A non-owning (pointer, size) window: a sub-buffer, or memory handed in by another library."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.ptr, self.nbytes = int(ptr), int(nbytes)

    def view(self, offset: int, nbytes: int) -> DeviceView:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise RtmwEdgeError(f"view [{offset}, {offset + nbytes}) outside a {self.nbytes}-byte buffer")
        return DeviceView(self.ptr + offset, nbytes)

    def __int__(self) -> int:
        return self.ptr


class DeviceBuffer(DeviceView):
    """cudaMalloc'ed device memory, freed by `free()` / the context manager."""

    def __init__(self, nbytes: int) -> None:
        ptr = rt("cudaMalloc", max(int(nbytes), 1))
        super().__init__(int(ptr), int(nbytes))
        self._owned = True

    def free(self) -> None:
        if self._owned and self.ptr:
            rt("cudaFree", self.ptr)
        self._owned, self.ptr = False, 0

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.free()


class PinnedBuffer:
    """Page-locked host memory (cudaHostAlloc): the only host memory async copies overlap with.

    `mapped=True` also maps it into the device's address space (cudaHostAllocMapped): `device_ptr` is then
    the address kernels use to read and write it directly — zero-copy, the right choice on an integrated GPU
    (Jetson), where host and device share the same DRAM and a copy-engine copy only duplicates bytes.
    """

    def __init__(self, nbytes: int, mapped: bool = False) -> None:
        _, runtime = cuda_modules()
        self.nbytes = int(nbytes)
        flags = int(runtime.cudaHostAllocPortable) | (int(runtime.cudaHostAllocMapped) if mapped else 0)
        self.ptr = int(rt("cudaHostAlloc", max(self.nbytes, 1), flags))
        self.mapped = bool(mapped)
        self.device_ptr = int(rt("cudaHostGetDevicePointer", self.ptr, 0)) if mapped else 0

    def array(self, dtype, shape, offset: int = 0) -> np.ndarray:
        """A numpy view of (part of) the buffer."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if offset < 0 or offset + count * dtype.itemsize > self.nbytes:
            raise RtmwEdgeError(f"pinned view of {count} {dtype} at {offset} exceeds {self.nbytes} bytes")
        raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(self.ptr + offset)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            rt("cudaFreeHost", self.ptr)
        self.ptr = self.device_ptr = 0

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.free()


def _kind(name: str):
    _, runtime = cuda_modules()
    return getattr(runtime.cudaMemcpyKind, name)


def copy_htod_async(dst: int, src: int, nbytes: int, stream: int) -> None:
    if nbytes:
        rt("cudaMemcpyAsync", int(dst), int(src), int(nbytes), _kind("cudaMemcpyHostToDevice"), stream)


def copy_dtoh_async(dst: int, src: int, nbytes: int, stream: int) -> None:
    if nbytes:
        rt("cudaMemcpyAsync", int(dst), int(src), int(nbytes), _kind("cudaMemcpyDeviceToHost"), stream)


def copy_dtod_async(dst: int, src: int, nbytes: int, stream: int) -> None:
    if nbytes:
        rt("cudaMemcpyAsync", int(dst), int(src), int(nbytes), _kind("cudaMemcpyDeviceToDevice"), stream)


def copy_2d_htod_async(dst: int, dst_pitch: int, src: int, src_pitch: int, width_bytes: int, rows: int,
                       stream: int) -> None:
    """Pitched copy (e.g. a strided numpy frame or a pitched camera buffer) to device memory."""
    rt("cudaMemcpy2DAsync", int(dst), int(dst_pitch), int(src), int(src_pitch), int(width_bytes), int(rows),
       _kind("cudaMemcpyHostToDevice"), stream)


def memset_async(dst: int, value: int, nbytes: int, stream: int) -> None:
    if nbytes:
        rt("cudaMemsetAsync", int(dst), int(value), int(nbytes), stream)


# --------------------------------------------------------------------------- streams and events
class Stream:
    """A non-blocking CUDA stream we own, or an external handle we only use (`Stream(external=handle)`)."""

    def __init__(self, external=None, priority: int | None = None) -> None:
        _, runtime = cuda_modules()
        if external is not None:
            self.handle, self.owned = as_stream_handle(external), False
            return
        flags = runtime.cudaStreamNonBlocking
        if priority is None:
            self.handle = int(rt("cudaStreamCreateWithFlags", flags))
        else:
            self.handle = int(rt("cudaStreamCreateWithPriority", flags, int(priority)))
        self.owned = True

    def synchronize(self) -> None:
        rt("cudaStreamSynchronize", self.handle)

    def wait(self, event: Event) -> None:
        """Later work on this stream waits for `event` (no host involvement)."""
        rt("cudaStreamWaitEvent", self.handle, event.handle, 0)

    def close(self) -> None:
        if self.owned and self.handle:
            rt("cudaStreamDestroy", self.handle)
        self.handle, self.owned = 0, False

    def __int__(self) -> int:
        return self.handle


class Event:
    """A CUDA event; `timing=True` for elapsed-time measurement (otherwise the cheaper sync-only kind)."""

    def __init__(self, timing: bool = False, blocking_sync: bool = False) -> None:
        _, runtime = cuda_modules()
        flags = runtime.cudaEventDefault if timing else runtime.cudaEventDisableTiming
        if blocking_sync:  # the waiting host thread sleeps instead of spinning (Jetson: saves a CPU core)
            flags = int(flags) | int(runtime.cudaEventBlockingSync)
        self.handle = int(rt("cudaEventCreateWithFlags", flags))
        self.timing = timing

    def record(self, stream: Stream | int) -> Event:
        rt("cudaEventRecord", self.handle, int(stream))
        return self

    def synchronize(self) -> None:
        rt("cudaEventSynchronize", self.handle)

    def query(self) -> bool:
        """True when all work before the record has completed (never blocks)."""
        _, runtime = cuda_modules()
        err = runtime.cudaEventQuery(self.handle)
        err = err[0] if isinstance(err, tuple) else err
        if int(err) == 0:
            return True
        if err == runtime.cudaError_t.cudaErrorNotReady:
            return False
        raise CudaError(f"cudaEventQuery: {getattr(err, 'name', err)}")

    def elapsed_ms(self, end: Event) -> float:
        """Milliseconds from this event to `end` (both recorded with timing=True, both completed)."""
        return float(rt("cudaEventElapsedTime", self.handle, end.handle))

    def close(self) -> None:
        if self.handle:
            rt("cudaEventDestroy", self.handle)
        self.handle = 0


# --------------------------------------------------------------------------- kernels
class KernelModules:
    """The project's kernels compiled for one device (NVRTC, cached on disk) and loaded in its context."""

    def __init__(self, device: Device) -> None:
        driver, _ = cuda_modules()
        self.device = device
        kind, arch = nvrtc.choose_target(device.capability, nvrtc.supported_archs())
        self.kind, self.arch = kind, arch
        self.functions: dict[str, object] = {}
        self.modules = []
        from .kernels import SIGNATURES

        for file_name in nvrtc.KERNEL_FILES:
            compiled = nvrtc.compile_kernel(file_name, arch, kind)
            module = drv("cuModuleLoadData", compiled.image)
            self.modules.append(module)
            for kernel, (source, _) in SIGNATURES.items():
                if source == file_name:
                    self.functions[kernel] = drv("cuModuleGetFunction", module, kernel.encode())
        self._driver = driver

    def launch(self, kernel: str, launch, args, stream: Stream | int) -> None:
        """Enqueue `kernel` with a kernels.Launch and kernels.KernelArgs on `stream`."""
        func = self.functions[kernel]
        if args.kernel != kernel:
            raise RtmwEdgeError(f"arguments packed for {args.kernel}, launched as {kernel}")
        drv("cuLaunchKernel", func, *launch.grid, *launch.block, launch.shared_bytes,
            self._driver.CUstream(int(stream)), args.address, 0)

    def close(self) -> None:
        for module in self.modules:
            with contextlib.suppress(Exception):
                drv("cuModuleUnload", module)
        self.modules, self.functions = [], {}


# --------------------------------------------------------------------------- CUDA graphs
class CudaGraph:
    """Work enqueued by `enqueue(stream)` captured once (thread-local mode) and replayed with one launch.

    Only for work whose pointers, sizes and scalar arguments do not change between replays (everything a
    graph bakes in belongs in its cache key) and whose engine allows capture (TensorRT after an eager
    `execute_async_v3` with exactly the captured shapes; not PyTorch eager, whose caching allocator must not
    allocate inside a foreign capture). A capture that fails is ended and its partial graph destroyed, and
    the error raised: nothing of it runs, so the caller runs the same work eagerly instead.
    """

    def __init__(self, stream: Stream, enqueue: Callable[[Stream], None]) -> None:
        _, runtime = cuda_modules()
        self.graph = self.exec = None
        mode = runtime.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        rt("cudaStreamBeginCapture", stream.handle, mode)
        try:
            enqueue(stream)
        except BaseException:
            _end_capture_quietly(stream)
            raise
        self.graph = rt("cudaStreamEndCapture", stream.handle)   # CudaError if the capture was invalidated
        try:
            # cuda-python 12 and 13: cudaGraphInstantiate(graph, flags) -> (err, graphExec)
            self.exec = rt("cudaGraphInstantiate", self.graph, 0)
        except BaseException:
            with contextlib.suppress(Exception):
                rt("cudaGraphDestroy", self.graph)
            self.graph = None
            raise

    def launch(self, stream: Stream | int) -> None:
        rt("cudaGraphLaunch", self.exec, int(stream))

    def close(self) -> None:
        """Destroy the executable graph and the graph — each on its own, so one failure never leaks the other."""
        if self.exec is not None:
            with contextlib.suppress(Exception):
                rt("cudaGraphExecDestroy", self.exec)
            self.exec = None
        if self.graph is not None:
            with contextlib.suppress(Exception):
                rt("cudaGraphDestroy", self.graph)
            self.graph = None


def _end_capture_quietly(stream: Stream) -> None:
    with contextlib.suppress(Exception):
        graph = rt("cudaStreamEndCapture", stream.handle)
        if graph is not None:
            rt("cudaGraphDestroy", graph)


class GraphCache:
    """Captured graphs by key, least recently used first out (at most `capacity`), plus the keys whose capture
    failed (never retried: they run eagerly). A key must hold everything the graph bakes in."""

    def __init__(self, capacity: int = 16) -> None:
        from collections import OrderedDict

        self.capacity = int(capacity)
        self.graphs: OrderedDict = OrderedDict()
        self.failed: dict[object, str] = {}
        self.captures = self.evictions = 0

    def get(self, key) -> CudaGraph | None:
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
        return graph

    def capture(self, key, stream: Stream, enqueue: Callable[[Stream], None]) -> CudaGraph | None:
        """Capture `enqueue` for `key` (nothing runs); None when the capture fails (remembered)."""
        if key in self.failed:
            return None
        try:
            graph = CudaGraph(stream, enqueue)
        except RtmwEdgeError as exc:
            self.failed[key] = str(exc)
            return None
        self.captures += 1
        self.graphs[key] = graph
        while len(self.graphs) > self.capacity:
            _, old = self.graphs.popitem(last=False)
            old.close()
            self.evictions += 1
        return graph

    def discard(self, keep: Callable[[object], bool]) -> None:
        """Destroy the graphs whose key `keep` rejects (e.g. captured under shapes the context no longer has)."""
        for key in [k for k in self.graphs if not keep(k)]:
            self.graphs.pop(key).close()

    def close(self) -> None:
        for graph in self.graphs.values():
            graph.close()
        self.graphs.clear()

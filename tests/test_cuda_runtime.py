"""The CUDA layer's calls against the real cuda-python signatures (cuda-python imports without a GPU): every
runtime function `cuda/runtime.py` calls is bound to the real binding's signature before a canned success is
returned, so a call the real cuda-python would refuse fails here."""

from __future__ import annotations

import inspect

import pytest

from rtmw_edge.cuda import runtime as R

runtime = pytest.importorskip("cuda.bindings.runtime")
driver = pytest.importorskip("cuda.bindings.driver")


class CheckedRuntime:
    """`cuda.bindings.runtime` whose functions check their arguments against the real signatures and return
    (cudaSuccess, *handles) without calling into CUDA."""

    HANDLES = {"cudaStreamEndCapture": 1, "cudaGraphInstantiate": 1, "cudaStreamCreateWithFlags": 1,
               "cudaStreamCreateWithPriority": 1, "cudaEventCreateWithFlags": 1, "cudaMalloc": 1,
               "cudaHostAlloc": 1}

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name):
        real = getattr(runtime, name)
        if isinstance(real, type) or not callable(real):
            return real                                          # enums, structs, constants
        signature = inspect.signature(real)

        def call(*args, **kwargs):
            signature.bind(*args, **kwargs)                      # TypeError exactly where cuda-python raises one
            self.calls.append((name, args))
            return (runtime.cudaError_t.cudaSuccess, *([0x1000 + len(self.calls)] * self.HANDLES.get(name, 0)))
        return call


@pytest.fixture
def checked(monkeypatch):
    rt = CheckedRuntime()
    monkeypatch.setattr(R, "cuda_modules", lambda: (driver, rt))
    return rt


def test_graph_capture_instantiate_launch_with_the_real_signatures(checked):
    stream = R.Stream()
    cache = R.GraphCache()
    enqueued = []
    assert cache.run("pose", stream, lambda s: enqueued.append(s)) is True       # captured now
    assert cache.run("pose", stream, lambda s: enqueued.append(s)) is False      # replayed
    cache.close()
    stream.close()
    names = [n for n, _ in checked.calls]
    assert names == ["cudaStreamCreateWithFlags", "cudaStreamBeginCapture", "cudaStreamEndCapture",
                     "cudaGraphInstantiate", "cudaGraphLaunch", "cudaGraphLaunch", "cudaGraphExecDestroy",
                     "cudaGraphDestroy", "cudaStreamDestroy"]
    assert len(enqueued) == 1
    instantiate = dict(checked.calls)["cudaGraphInstantiate"]
    assert len(instantiate) == 2 and instantiate[1] == 0                          # (graph, flags)


def test_the_removed_fallback_was_a_call_cuda_python_refuses():
    """cuda-python 11's cudaGraphInstantiate(graph, errorNode, bufferSize) form: 12.x takes (graph, flags)."""
    assert list(inspect.signature(runtime.cudaGraphInstantiate).parameters) == ["graph", "flags"]
    with pytest.raises(TypeError):
        runtime.cudaGraphInstantiate(runtime.cudaGraph_t(), None, 0)
    with pytest.raises(TypeError):
        CheckedRuntime().cudaGraphInstantiate(1, None, 0)


def test_buffers_streams_events_and_copies_with_the_real_signatures(checked):
    buf = R.DeviceBuffer(64)
    stream = R.Stream(priority=-1)
    event = R.Event(timing=True, blocking_sync=True)
    event.record(stream)
    stream.wait(event)
    R.copy_htod_async(buf.ptr, 0x2000, 64, stream.handle)
    R.copy_dtoh_async(0x2000, buf.ptr, 64, stream.handle)
    R.copy_dtod_async(buf.ptr, buf.ptr, 64, stream.handle)
    R.copy_2d_htod_async(buf.ptr, 32, 0x2000, 48, 24, 2, stream.handle)
    R.memset_async(buf.ptr, 0, 64, stream.handle)
    event.synchronize()
    stream.synchronize()
    event.close()
    stream.close()
    buf.free()
    names = {n for n, _ in checked.calls}
    assert {"cudaMalloc", "cudaStreamCreateWithPriority", "cudaEventCreateWithFlags", "cudaEventRecord",
            "cudaStreamWaitEvent", "cudaMemcpyAsync", "cudaMemcpy2DAsync", "cudaMemsetAsync", "cudaFree"} <= names

"""The CUDA layer's calls against the real cuda-python signatures, for both supported majors (12.x, installed, and
13.x, fetched as a wheel): cuda-python imports without a GPU, so every runtime function `cuda/runtime.py` calls
is bound to the real binding's signature before a canned success is returned (`CheckedRuntime`), and the whole
GPU pipeline runs on the emulated runtime (tests/emulated_cuda.py), which binds each call the same way — once
in this process (12.x) and once in a child process whose `cuda.bindings` is 13.x."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import SHARED

from rtmw_edge.cuda import runtime as R

runtime = pytest.importorskip("cuda.bindings.runtime")
driver = pytest.importorskip("cuda.bindings.driver")
TESTS = Path(__file__).resolve().parent


class CheckedRuntime:
    """`cuda.bindings.runtime` whose functions check their arguments against the real signatures and return
    (cudaSuccess, *handles) without calling into CUDA."""

    HANDLES = {"cudaStreamEndCapture": 1, "cudaGraphInstantiate": 1, "cudaStreamCreateWithFlags": 1,
               "cudaStreamCreateWithPriority": 1, "cudaEventCreateWithFlags": 1, "cudaMalloc": 1,
               "cudaHostAlloc": 1, "cudaHostGetDevicePointer": 1}

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
    graph = cache.capture("pose", stream, lambda s: enqueued.append(s))           # captured, not launched
    assert graph is not None and cache.get("pose") is graph
    graph.launch(stream)
    graph.launch(stream)
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
    mapped = R.PinnedBuffer(64, mapped=True)
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
    mapped.free()
    names = {n for n, _ in checked.calls}
    assert {"cudaMalloc", "cudaStreamCreateWithPriority", "cudaEventCreateWithFlags", "cudaEventRecord",
            "cudaStreamWaitEvent", "cudaMemcpyAsync", "cudaMemcpy2DAsync", "cudaMemsetAsync", "cudaFree",
            "cudaHostAlloc", "cudaHostGetDevicePointer", "cudaFreeHost"} <= names


# --------------------------------------------------------------------------------------- cuda-python 13.x
def cuda_bindings(major: int) -> Path:
    """A folder whose `cuda/bindings` is cuda-bindings `major`.x (the wheel from PyPI, unpacked once into the
    test cache); skips where the package index cannot be reached."""
    cache = Path(os.environ.get("RTMW_EDGE_TEST_CACHE", Path.home() / ".cache" / "rtmw-edge-tests"))
    folder = cache / f"cuda-bindings-{major}"
    if (folder / "cuda" / "bindings").is_dir():
        return folder
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    tag = f"{sys.version_info.major}{sys.version_info.minor}"
    found = sorted(wheels.glob(f"cuda_bindings-{major}.*-cp{tag}-*.whl"))
    if not found:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
                            f"cuda-bindings>={major},<{major + 1}"], check=True, timeout=300, capture_output=True)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"cuda-bindings {major}.x not available from the package index here ({type(exc).__name__})")
        found = sorted(wheels.glob(f"cuda_bindings-{major}.*-cp{tag}-*.whl"))
    tmp = folder.with_name(folder.name + ".tmp")
    with zipfile.ZipFile(found[-1]) as wheel:
        wheel.extractall(tmp)
    tmp.rename(folder)
    return folder


SCENARIO = r'''
import sys, cv2, numpy as np, pytest
sys.path.insert(0, sys.argv[1])
import cuda.bindings.runtime as runtime
assert runtime.__file__.startswith(sys.argv[2]), runtime.__file__
from emulated_cuda import Emulator, OrtDeviceEngine
from rtmw_edge.cuda import gpu_pipeline as P, runtime as R
from rtmw_edge.export import export_onnx
mp = pytest.MonkeyPatch()
emu = Emulator(seed=4).install(mp)
pose_path = export_onnx("rtmpose-t-256x192", sys.argv[4], random_init=True, progress=False)
det = OrtDeviceEngine(emu, sys.argv[3], max_batch=1)
pose = OrtDeviceEngine(emu, pose_path, max_batch=4)
est = P.GpuPoseEstimator(sys.argv[3], pose_path, det_engine=det, pose_engine=pose, profile=True)
image = cv2.imread(sys.argv[5])
results = [est(image)] + [r for _, r in est.stream([image, image])]
stream = R.Stream()
R.CudaGraph(stream, lambda s: None).close()
stream.close()
est.close()
assert [len(r.persons) for r in results] == [1, 1, 1], results
assert not any(emu.leaks().values()), emu.leaks()
print("ok", runtime.__file__)
'''


def test_every_runtime_call_fits_cuda_python_13_too(tmp_path):
    """The pipeline's calls (devices, pinned/mapped memory, streams, events, copies, kernels, graphs, timing) bound
    to cuda-bindings 13's real signatures and enums, in a child process where `cuda.bindings` is 13.x."""
    folder = cuda_bindings(13)
    photo = SHARED / "images" / "human-pose.jpg"
    det = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
    if not photo.is_file() or not det.is_file():
        pytest.skip("shared detector/photo not found")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", SCENARIO, str(folder), str(folder), str(det),
                          str(tmp_path / "t.onnx"), str(photo)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ") and str(folder) in out.stdout

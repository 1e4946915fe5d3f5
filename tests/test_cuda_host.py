"""The host shim itself (`rtmw_edge.cuda.host`): its CUDA semantics on small kernels written for the purpose —
a barrier that really separates phases (and a missing one that shows), shuffles, shared memory, atomics, a
divergent barrier that stops the launch — what it refuses like a GPU would, the build cache, and the project's
kernels under AddressSanitizer + UBSan (slow)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rtmw_edge.cuda import host as H
from rtmw_edge.cuda import kernels as KK

TEST_KERNELS = r"""
// every thread writes its index to shared memory, then reads its right neighbour's: needs the barrier
extern "C" __global__ void __launch_bounds__(128) neighbour(int* out, int with_barrier)
{
    __shared__ int s[128];
    const int t = threadIdx.x;
    s[t] = t * 10;
    if (with_barrier) __syncthreads();
    out[blockIdx.x * blockDim.x + t] = s[(t + 1) % blockDim.x];
}

// warp sum by shuffles, block sum by an atomic in shared memory
extern "C" __global__ void __launch_bounds__(256) reduce(const float* in, float* warp_sums, int* block_count)
{
    __shared__ int s_count;
    if (threadIdx.x == 0) s_count = 0;
    __syncthreads();
    float v = in[blockIdx.x * blockDim.x + threadIdx.x];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if ((threadIdx.x & 31) == 0) {
        warp_sums[(blockIdx.x * blockDim.x + threadIdx.x) / 32] = v;
        atomicAdd(&s_count, 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) block_count[blockIdx.x] = s_count;
}

// a barrier inside a branch only half the block takes: undefined on a GPU, an error here
extern "C" __global__ void __launch_bounds__(64) divergent(int* out)
{
    if (threadIdx.x < 32) __syncthreads();
    out[threadIdx.x] = 1;
}

// 2-D/3-D indices
extern "C" __global__ void __launch_bounds__(64) indices(int* out, int width, int height)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || y >= height) return;
    out[(blockIdx.z * height + y) * width + x] = (int)(blockIdx.z * 1000000 + y * 1000 + x);
}
"""
NAMES = ("neighbour", "reduce", "divergent", "indices")


@pytest.fixture(scope="module")
def test_sources(tmp_path_factory):
    path = tmp_path_factory.mktemp("shim") / "shim_tests.cu"
    path.write_text(TEST_KERNELS)
    return {path: NAMES}


def run(kernels, name, grid, block, **arrays_and_ints):
    """Launch with a void** array built the way KernelArgs builds it (ctypes values, their addresses)."""
    values = [ctypes.c_uint64(v.ctypes.data) if isinstance(v, np.ndarray) else ctypes.c_int32(v)
              for v in arrays_and_ints.values()]
    array = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))

    class Args:
        kernel = name
    Args.values, Args.address = values, ctypes.addressof(array)
    kernels.launch(name, KK.Launch(grid, block), Args)


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_syncthreads_separates_the_phases_and_a_missing_one_shows(test_sources, order):
    kernels = H.HostKernels(order=order, seed=3, sources=test_sources)
    want = ((np.arange(256) % 128 + 1) % 128 * 10).astype(np.int32)
    out = np.full(256, -1, np.int32)
    run(kernels, "neighbour", (2, 1, 1), (128, 1, 1), out=out, with_barrier=1)
    np.testing.assert_array_equal(out, want)
    out[:] = -1
    run(kernels, "neighbour", (2, 1, 1), (128, 1, 1), out=out, with_barrier=0)
    assert not np.array_equal(out, want)       # reads before the neighbour wrote: stale values


def test_shuffles_shared_memory_and_atomics(test_sources):
    kernels = H.HostKernels(sources=test_sources)
    data = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    warp_sums, counts = np.zeros(16, np.float32), np.zeros(2, np.int32)
    run(kernels, "reduce", (2, 1, 1), (256, 1, 1), data=data, warp_sums=warp_sums, counts=counts)
    np.testing.assert_allclose(warp_sums, data.reshape(16, 32).sum(1), rtol=1e-5)
    assert counts.tolist() == [8, 8]           # 8 warps per block, counted in the block's own shared memory


def test_thread_and_block_indices_cover_the_grid_once(test_sources):
    kernels = H.HostKernels(order="shuffled", seed=1, sources=test_sources)
    w, h, d = 37, 11, 3
    out = np.full(d * h * w, -1, np.int32)
    run(kernels, "indices", (5, 3, d), (8, 4, 1), out=out, width=w, height=h)
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    np.testing.assert_array_equal(out.reshape(d, h, w), z * 1000000 + y * 1000 + x)


def test_a_divergent_barrier_stops_the_launch(test_sources):
    kernels = H.HostKernels(sources=test_sources)
    with pytest.raises(H.HostLaunchError, match="divergent __syncthreads"):
        run(kernels, "divergent", (1, 1, 1), (64, 1, 1), out=np.zeros(64, np.int32))


def test_launches_a_gpu_would_refuse_are_refused(test_sources):
    kernels = H.HostKernels(sources=test_sources)
    with pytest.raises(H.HostLaunchError, match=r"exceeds its __launch_bounds__\(128\)"):
        run(kernels, "neighbour", (1, 1, 1), (256, 1, 1), out=np.zeros(256, np.int32), with_barrier=1)
    with pytest.raises(H.HostLaunchError, match="invalid grid"):
        run(kernels, "indices", (1, 70000, 1), (8, 1, 1), out=np.zeros(8, np.int32), width=8, height=1)
    with pytest.raises(H.HostLaunchError, match="the .cu takes 2 parameters"):
        run(kernels, "neighbour", (1, 1, 1), (128, 1, 1), out=np.zeros(128, np.int32))
    project = H.HostKernels()
    args = KK.pack_args("decoded_to_image", keypoints=0, scores=0, z=0, params=0, num_persons=0, num_keypoints=0,
                        in_w=1.0, in_h=1.0, out=0, out3d=0, depth_half=1.0, z_range=0.0, root_z=0.0, fx=1.0,
                        fy=1.0, cx=0.0, cy=0.0)
    args.values[6] = ctypes.c_double(1.0)      # a double where the kernel takes a float: 8 bytes, not 4
    with pytest.raises(H.HostLaunchError, match="parameters of"):
        project.launch("decoded_to_image", KK.decoded_launch(1, 1), args)


def test_every_project_kernel_is_in_the_library_with_its_python_signature():
    lib = H.load_library()
    sizes = (ctypes.c_int * 64)()
    for kernel, (_, params) in KK.SIGNATURES.items():
        count = lib.rtmw_host_kernel_params(kernel.encode(), sizes, 64)
        assert count == len(params), kernel
        assert list(sizes[:count]) == [{"p": 8, "i": 4, "f": 4, "d": 8}[code] for _, code in params], kernel
    assert H.launch_bounds(H.project_sources()) == {"letterbox_bgr_to_nchw": 256, "rtmdet_rawhead_decode": 256,
                                                    "detector_select": 512, "crop_persons_bgr_to_nchw": 256,
                                                    "simcc_decode_to_image": 256, "decoded_to_image": 256}


def test_the_library_is_built_once_per_source_and_reused(test_sources, tmp_path):
    first = H.build_library(test_sources, directory=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert H.build_library(test_sources, directory=tmp_path) == first and first.stat().st_mtime_ns == stamp
    (source,) = test_sources
    changed = tmp_path / "changed.cu"
    changed.write_text(source.read_text().replace("t * 10", "t * 11"))
    assert H.build_library({changed: NAMES}, directory=tmp_path) != first
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".cu", ".so", ".so"]     # no temporary left


def test_a_kernel_that_does_not_compile_is_one_line(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void broken(int* out) { out[0] = undeclared; }\n')
    with pytest.raises(H.HostCompilerError, match="does not compile unit_0_bad.cpp.*undeclared"):
        H.build_library({bad: ("broken",)}, directory=tmp_path / "cache")


SANITIZED_CHILD = r"""
import ctypes, sys
import numpy as np
from rtmw_edge.cuda import host as H
from rtmw_edge.cuda import kernels as KK
kernels = H.HostKernels(sources={sys.argv[1]: (sys.argv[2],)}, sanitize="address,undefined")
out, value = np.zeros(32, np.int32), ctypes.c_float(float("nan"))
values = [ctypes.c_uint64(out.ctypes.data), value]
array = (ctypes.c_void_p * 2)(*(ctypes.addressof(v) for v in values))
class Args: kernel, values, address = sys.argv[2], values, ctypes.addressof(array)
kernels.launch(sys.argv[2], KK.Launch((1, 1, 1), (32, 1, 1)), Args)
print("no report")
"""
BAD_KERNELS = r"""
extern "C" __global__ void past_the_end(int* out, float unused) { out[threadIdx.x + 1] = 1; }
extern "C" __global__ void nan_to_int(int* out, float nan) { out[threadIdx.x] = (int)nan; }
"""


def sanitized_env(runtime: str, **extra) -> dict:
    return dict(os.environ, LD_PRELOAD=runtime, RTMW_EDGE_HOST_SANITIZE="address,undefined",
                ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:abort_on_error=1",
                UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", **extra)


@pytest.mark.slow
def test_the_sanitizers_report_out_of_bounds_writes_and_nan_to_int(tmp_path):
    """The sanitized build is live: a write one past a buffer is an ASan report, (int)NaN a UBSan one."""
    runtime = H.asan_runtime()
    if runtime is None:
        pytest.skip("the compiler has no AddressSanitizer runtime")
    bad = tmp_path / "bad.cu"
    bad.write_text(BAD_KERNELS)
    root = Path(__file__).resolve().parents[1]
    for kernel, report in (("past_the_end", "AddressSanitizer: heap-buffer-overflow"),
                           ("nan_to_int", "runtime error: nan is outside the range")):
        proc = subprocess.run([sys.executable, "-c", SANITIZED_CHILD, str(bad), kernel], cwd=root, capture_output=True,
                              text=True, env=sanitized_env(runtime), timeout=600)
        assert proc.returncode != 0 and report in proc.stderr, (kernel, proc.stdout, proc.stderr[-2000:])


@pytest.mark.slow
def test_project_kernels_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    """The kernel-vs-twin and edge-input tests again, with the library built with -fsanitize=address,undefined,
    float-cast-overflow (UBSan aborts at the first report; libasan preloaded into a child Python)."""
    runtime = H.asan_runtime()
    if runtime is None:
        pytest.skip("the compiler has no AddressSanitizer runtime")
    from test_cuda_kernel_twins import save_rawhead_outputs

    root = Path(__file__).resolve().parents[1]
    outputs = tmp_path / "rawhead.npz"
    save_rawhead_outputs(outputs)           # ONNX Runtime does not load under a preloaded libasan: detect here
    env = sanitized_env(runtime, RTMW_EDGE_RAWHEAD_OUTPUTS=str(outputs))
    tests = ["tests/test_cuda_kernel_twins.py", "tests/test_cuda_edge_inputs.py", "tests/test_cuda_host.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests,
                           "-m", "not slow and not gpu"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=1800)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "runtime error" not in output and "AddressSanitizer" not in output, output[-4000:]
    assert " passed" in output

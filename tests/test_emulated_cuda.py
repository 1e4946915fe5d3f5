"""The emulated CUDA runtime's own rules (tests/emulated_cuda.py), each against CUDA's documented behaviour, driven
through the project's runtime layer (`rtmw_edge.cuda.runtime`) as the pipeline drives it. If these did not hold,
the pipeline tests on top of it could not fail for the faults they are there to catch."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from emulated_cuda import POISON, EmulationError, Emulator

from rtmw_edge.cuda import runtime as R

pytest.importorskip("cuda.bindings.runtime")


@pytest.fixture(params=["eager-0", "eager-1", "lazy"])
def emu(monkeypatch, request):
    policy, _, seed = request.param.partition("-")
    return Emulator(seed=int(seed or 0), policy=policy).install(monkeypatch)


def host_array(buf: R.PinnedBuffer, n: int) -> np.ndarray:
    return buf.array(np.float32, (n,))


def fill(dev: R.DeviceBuffer, values: np.ndarray, stream: R.Stream, pinned: R.PinnedBuffer) -> None:
    np.copyto(host_array(pinned, len(values)), values)
    R.copy_htod_async(dev.ptr, pinned.ptr, values.nbytes, stream.handle)


def test_a_read_before_the_wait_sees_poison_not_stale_values(emu):
    s = R.Stream()
    dev, pin, out = R.DeviceBuffer(64), R.PinnedBuffer(64), R.PinnedBuffer(64)
    fill(dev, np.arange(16, dtype=np.float32), s, pin)
    s.synchronize()
    R.copy_dtoh_async(out.ptr, dev.ptr, 64, s.handle)
    early = out.array(np.uint8, (64,)).copy()
    assert (early == POISON).all()                       # queued, not run: poison (NaN / -1), never old data
    assert np.isnan(out.array(np.float32, (16,))).all() and (out.array(np.int32, (16,)) == -1).all()
    done = R.Event()
    done.record(s)
    done.synchronize()
    np.testing.assert_array_equal(host_array(out, 16), np.arange(16, dtype=np.float32))


def test_unordered_accesses_on_two_streams_are_a_race_naming_both(emu):
    a, b = R.Stream(), R.Stream()
    dev, pin, out = R.DeviceBuffer(64), R.PinnedBuffer(64), R.PinnedBuffer(64)
    fill(dev, np.ones(16, np.float32), a, pin)
    with pytest.raises(EmulationError, match=r"data race .*cudaMemcpyAsync.*cudaMemcpyAsync"):
        R.copy_dtoh_async(out.ptr, dev.ptr, 64, b.handle)   # reads what stream a is still writing


def test_an_event_orders_two_streams(emu):
    a, b = R.Stream(), R.Stream()
    dev, pin, out = R.DeviceBuffer(64), R.PinnedBuffer(64), R.PinnedBuffer(64)
    fill(dev, np.full(16, 7, np.float32), a, pin)
    ev = R.Event()
    ev.record(a)
    b.wait(ev)
    R.copy_dtoh_async(out.ptr, dev.ptr, 64, b.handle)
    b.synchronize()                                       # only b waited: a's copy ran because b waited for it
    np.testing.assert_array_equal(host_array(out, 16), np.full(16, 7, np.float32))


def test_an_event_recorded_before_the_work_it_guards_orders_nothing(emu):
    a, b = R.Stream(), R.Stream()
    dev, pin, out = R.DeviceBuffer(64), R.PinnedBuffer(64), R.PinnedBuffer(64)
    ev = R.Event()
    ev.record(a)                                          # too early
    fill(dev, np.full(16, 7, np.float32), a, pin)
    b.wait(ev)
    with pytest.raises(EmulationError, match="data race"):
        R.copy_dtoh_async(out.ptr, dev.ptr, 64, b.handle)


def test_a_host_wait_orders_later_work_on_any_stream(emu):
    a, b = R.Stream(), R.Stream()
    dev, pin, out = R.DeviceBuffer(64), R.PinnedBuffer(64), R.PinnedBuffer(64)
    fill(dev, np.full(16, 3, np.float32), a, pin)
    a.synchronize()
    R.copy_dtoh_async(out.ptr, dev.ptr, 64, b.handle)     # enqueued after the host saw a's work finish
    b.synchronize()
    np.testing.assert_array_equal(host_array(out, 16), np.full(16, 3, np.float32))


def test_the_host_may_not_rewrite_a_pinned_source_before_its_copy_ran(emu):
    s = R.Stream()
    dev, pin = R.DeviceBuffer(64), R.PinnedBuffer(64)
    fill(dev, np.ones(16, np.float32), s, pin)
    host_array(pin, 16)[:] = 2                            # next frame written into the staging buffer too early
    with pytest.raises(EmulationError, match="changed .* while .*was queued"):
        s.synchronize()


def test_lazy_runs_only_what_the_host_waited_for(monkeypatch):
    emu = Emulator(policy="lazy").install(monkeypatch)
    a, b = R.Stream(), R.Stream()
    dev_a, dev_b, pin_a, pin_b = R.DeviceBuffer(64), R.DeviceBuffer(64), R.PinnedBuffer(64), R.PinnedBuffer(64)
    fill(dev_a, np.ones(16, np.float32), a, pin_a)
    fill(dev_b, np.ones(16, np.float32), b, pin_b)
    a.synchronize()
    assert len(emu.pending()) == 1 and emu.pending()[0].stream.handle == b.handle


def test_legacy_stream_orders_against_blocking_streams_only(emu):
    _, runtime = R.cuda_modules()
    blocking = R.Stream.__new__(R.Stream)
    blocking.handle, blocking.owned = int(R.rt("cudaStreamCreateWithFlags", runtime.cudaStreamDefault)), True
    nonblocking = R.Stream()
    dev, pin, out = R.DeviceBuffer(64), R.PinnedBuffer(64), R.PinnedBuffer(64)
    fill(dev, np.ones(16, np.float32), blocking, pin)
    R.copy_dtoh_async(out.ptr, dev.ptr, 64, 0)            # legacy stream: waits for the blocking stream
    R.rt("cudaDeviceSynchronize")
    dev2, pin2 = R.DeviceBuffer(64), R.PinnedBuffer(64)
    fill(dev2, np.ones(16, np.float32), nonblocking, pin2)
    with pytest.raises(EmulationError, match="data race"):
        R.copy_dtoh_async(out.ptr, dev2.ptr, 64, 0)       # ... but not for a non-blocking one


def test_freed_memory_with_queued_work_is_an_error(emu):
    s = R.Stream()
    dev, pin = R.DeviceBuffer(64), R.PinnedBuffer(64)
    fill(dev, np.ones(16, np.float32), s, pin)
    with pytest.raises(EmulationError, match="queued work still uses"):
        dev.free()


def test_capture_rules_follow_cuda(emu):
    s = R.Stream()
    dev, pin, out = R.DeviceBuffer(64), R.PinnedBuffer(64), R.PinnedBuffer(64)
    np.copyto(host_array(pin, 16), np.arange(16, dtype=np.float32))
    mark = R.Event(timing=True)
    start = R.Event(timing=True)
    start.record(s)

    def work(stream):
        R.copy_htod_async(dev.ptr, pin.ptr, 64, stream.handle)
        mark.record(stream)
        R.copy_dtoh_async(out.ptr, dev.ptr, 64, stream.handle)

    graph = R.CudaGraph(s, work)
    assert emu.pending() == [] or all(op.kind == "record" for op in emu.pending())   # recorded, not run
    for call in (mark.synchronize, mark.query, lambda: start.elapsed_ms(mark)):
        with pytest.raises(R.CudaError, match="cudaErrorCapturedEvent"):
            call()
    for value in (1.0, 5.0):                              # replays re-run the recorded copies
        np.copyto(host_array(pin, 16), np.full(16, value, np.float32))
        graph.launch(s)
        s.synchronize()
        np.testing.assert_array_equal(host_array(out, 16), np.full(16, value, np.float32))
    graph.close()
    assert emu.leaks()["graphs"] == emu.leaks()["graph_execs"] == 0

    def illegal(stream):
        stream.synchronize()
    with pytest.raises(R.CudaError, match="cudaErrorStreamCaptureUnsupported"):
        R.CudaGraph(s, illegal)
    with pytest.raises(R.CudaError, match="cudaErrorStreamCaptureUnsupported"):
        R.CudaGraph(s, lambda stream: R.DeviceBuffer(16))
    assert emu.leaks()["graphs"] == 0                     # the failed captures left no graph behind
    cache = R.GraphCache()
    assert cache.capture("k", s, illegal) is None and "k" in cache.failed
    assert cache.capture("k", s, work) is None            # a failed key is not captured again
    assert emu.stats["captures"] == 4                     # ... the fifth attempt never began


def test_graph_cache_is_bounded_and_destroys_what_it_evicts(emu):
    s = R.Stream()
    cache = R.GraphCache(capacity=3)
    for key in range(7):
        assert cache.capture(key, s, lambda stream: None) is not None
    assert list(cache.graphs) == [4, 5, 6] and cache.evictions == 4
    assert emu.leaks()["graph_execs"] == 3
    cache.discard(lambda key: key != 5)
    assert list(cache.graphs) == [4, 6] and emu.leaks()["graph_execs"] == 2
    cache.close()
    assert emu.leaks()["graph_execs"] == emu.leaks()["graphs"] == 0


def test_calls_are_bound_to_the_real_signatures(emu):
    _, runtime = R.cuda_modules()
    with pytest.raises(TypeError):
        runtime.cudaMemcpyAsync(0, 0, 4, runtime.cudaMemcpyKind.cudaMemcpyHostToDevice)   # no stream
    with pytest.raises(TypeError):
        runtime.cudaGraphInstantiate(1, None, 0)          # the cuda-python 11 form


def test_mapped_pinned_memory_and_the_integrated_property(monkeypatch):
    emu = Emulator(integrated=True).install(monkeypatch)
    device = R.get_device(0)
    assert device.integrated and device.can_map_host
    buf = R.PinnedBuffer(64, mapped=True)
    assert buf.device_ptr == buf.ptr and emu.find(buf.ptr).kind == "mapped"
    ctypes.memset(buf.ptr, 0, 64)
    buf.free()
    assert emu.leaks()["pinned"] == 0


def test_gpu_validation_script_refuses_each_gpu_step_in_one_line_without_a_gpu(tmp_path):
    """scripts/gpu_validate.sh on a machine without a GPU (CI): the CPU steps run, each GPU step is skipped with
    one line saying why, and one JSON + one markdown table come out."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_validate.sh"
    out = subprocess.run(["bash", str(script), "--quick", "--out", str(tmp_path / "v")], capture_output=True,
                         text=True, timeout=600, env={**__import__("os").environ, "PYTHON": sys.executable})
    report = json.loads((tmp_path / "v" / "gpu-validation.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert out.returncode == (1 if any(s["status"] == "failed" for s in steps.values()) else 0)
    assert steps["emulated"]["status"] == "passed", steps["emulated"]
    gpu_steps = ["gpu-tests", "memcheck", "racecheck", "synccheck", "bench-torch", "bench-trt"]
    try:
        ok = R.device_available(0)[0]
    except Exception:
        ok = False
    if not ok:
        for name in gpu_steps:
            assert steps[name]["status"] == "skipped" and steps[name]["detail"] and "\n" not in steps[name]["detail"]
    table = (tmp_path / "v" / "gpu-validation.md").read_text()
    assert all(f"| {name} |" in table for name in ["environment", "emulated", *gpu_steps])

"""The CUDA-stream pipeline's stream, event, graph and execution-context rules, under real asynchrony on the CPU.

Every test runs `GpuPoseEstimator` over the emulated CUDA runtime (tests/emulated_cuda.py: deferred per-stream
work in a seeded interleaving, poisoned pinned memory, a happens-before check of every byte range, CUDA's graph
capture rules) with engines from the TensorRT stand-in (tests/fake_tensorrt.py, held to TensorRT's runtime rules:
one profile per context, 256-byte aligned addresses, capture only after an eager enqueue of the same shapes) or
deferred ONNX Runtime engines. Each test is named after the row of docs/gpu-validation.md ("the CUDA-stream
runtime's defects") it pins; each failed before its fix.
"""

from __future__ import annotations

import sys
import threading

import cv2
import numpy as np
import onnx
import pytest
from conftest import SHARED
from emulated_cuda import EmulationError, Emulator, OrtDeviceEngine, TorchDeviceEngine
from fake_tensorrt import make_fake_tensorrt
from kernel_devices import pipelines_agree
from onnx import TensorProto, helper

from rtmw_edge import geometry as G
from rtmw_edge.backends import tensorrt as trt_backend
from rtmw_edge.cuda import gpu_pipeline as P
from rtmw_edge.cuda import kernels as KK
from rtmw_edge.cuda import runtime as R
from rtmw_edge.engines import EngineError, GpuInfo
from rtmw_edge.errors import RtmwEdgeError
from rtmw_edge.pipeline import PoseEstimator

RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
ORIN = GpuInfo("Orin", "8.7")
pytestmark = [pytest.mark.skipif(not RAWHEAD.is_file(), reason="shared detector not found"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
pytest.importorskip("cuda.bindings.runtime")


def photo(name: str = "human-pose.jpg") -> np.ndarray:
    return cv2.imread(str(SHARED / "images" / name))


@pytest.fixture(scope="module")
def models(tmp_path_factory, random_export):
    """A random-weight RTMPose-t export (SimCC outputs and a --decode twin) and TensorRT stand-in engines of them
    and of the shared RTMDet-nano raw head; the pose engines take at most 2 persons per call."""
    folder = tmp_path_factory.mktemp("async")
    out = {"pose_onnx": random_export("rtmpose-t-256x192"),
           "decode_onnx": random_export("rtmpose-t-256x192", decode=True)}
    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3.0.30"))
    mp.setattr(trt_backend, "gpu_identity", lambda device=0: ORIN)
    try:
        out["det"] = trt_backend.build_engine(RAWHEAD, folder / "det.engine", gpu=ORIN, progress=False,
                                              timing_cache=False).engine_path
        for key in ("pose", "decode"):
            out[key] = trt_backend.build_engine(out[f"{key}_onnx"], folder / f"{key}.engine", batch="1:2:2", gpu=ORIN,
                                                progress=False, timing_cache=False).engine_path
    finally:
        mp.undo()
    return out


@pytest.fixture
def trt(monkeypatch):
    module = make_fake_tensorrt("10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda device=0: ORIN)
    return module


@pytest.fixture
def emu(monkeypatch, trt, request):
    """The emulated runtime with TensorRT's stand-in attached. Default policy "lazy" (nothing runs that the host
    did not wait for: the strictest for host reads); tests that also want the GPU running ahead in a seeded
    interleaving parametrize "eager-SEED" (the happens-before check does not depend on the policy)."""
    policy, _, seed = getattr(request, "param", "lazy").partition("-")
    return Emulator(seed=int(seed or 0), policy=policy).install(monkeypatch, trt=trt)


def open_trt(models, pose: str = "pose", **options) -> P.GpuPoseEstimator:
    return P.GpuPoseEstimator(models["det"], models[pose], backend="tensorrt", **options)


def same_results(a, b) -> None:
    assert len(a.persons) == len(b.persons)
    for p, q in zip(a.persons, b.persons):
        np.testing.assert_array_equal(p.bbox, q.bbox)
        np.testing.assert_array_equal(p.keypoints, q.keypoints)
        np.testing.assert_array_equal(p.keypoint_scores, q.keypoint_scores)


# ------------------------------------------------------------------------------------------------ C: crashes
def test_c1_profiling_with_cuda_graphs_times_only_outside_the_capture(emu, models):
    image = photo()
    eager = open_trt(models)
    want = eager(image)
    eager.close()
    est = open_trt(models, cuda_graphs=True, profile=True)
    results = [est(image) for _ in range(4)]
    for got in results:
        same_results(want, got)
    slot = est.slots[0]
    assert slot.graphs.captures == 1 and emu.stats["graph_launches"] == 3       # eager, capture+replay, replays
    recorded_in_graphs = [node for nodes in emu.execs.values() for node in nodes if node[0] == "record"]
    assert emu.execs and recorded_in_graphs == []                               # no event inside a capture
    summary = est.timings.summary()
    assert {"letterbox", "detector", "select", "pose_segment"} <= set(summary)
    assert len(est.timings.ms["pose_segment"]) == 4 and len(est.timings.ms["crops"]) == 1   # stages: eager only
    est.close()


@pytest.mark.parametrize("emu", ["eager-3", "lazy"], indirect=True)
def test_c2_graphs_capture_right_after_an_eager_run_of_their_shapes(emu, models):
    """Person counts change from frame to frame (1, 2 and 4 = two chunks of 2; 3 = chunks 2 + 1, which never
    becomes a graph): every frame equals the eager pipeline, and TensorRT's stand-in, which fails a captured enqueue
    without a preceding eager one of the same shapes and a replay after the context's shapes changed, is satisfied."""
    frames = {1: photo("human-pose.jpg"), 2: photo("000000040083.jpg"), 4: photo("000000197388.jpg")}
    eager = open_trt(models, max_persons=4)
    want = {n: eager(im) for n, im in frames.items()}
    eager.close()
    assert {n: len(r.persons) for n, r in want.items()} == {1: 1, 2: 2, 4: 4}
    est = open_trt(models, max_persons=4, cuda_graphs=True)
    order = [1, 1, 2, 1, 2, 2, 4, 4, 1]
    for n in order:
        same_results(want[n], est(frames[n]))
    streamed = [1, 1, 1, 2, 2]
    for n, (_, got) in zip(streamed, est.stream([(frames[n], i, 0.0) for i, n in enumerate(streamed)])):
        same_results(want[n], got)
    captures = sum(s.graphs.captures for s in est.slots)
    assert captures >= 3 and emu.stats["graph_launches"] > captures
    assert not any(s.graphs.failed for s in est.slots)
    est.close()
    three = open_trt(models, max_persons=3, cuda_graphs=True)     # 3 persons: chunks of 2 and 1 → eager only
    for _ in range(3):
        assert len(three(frames[4]).persons) == 3
    assert three.slots[0].graphs.captures == 0 and not three.slots[0].graphs.failed
    three.close()


def test_c3_second_chunk_addresses_are_256_byte_aligned(emu, models):
    """A --decode pose graph (outputs of 136 and 68 bytes per person) with 3 persons on an engine of max batch 2:
    the second chunk's buffers start on 256-byte boundaries (TensorRT refuses anything else), and the keypoints
    equal the CPU pipeline's."""
    cpu = PoseEstimator(RAWHEAD, models["decode_onnx"], max_persons=3)
    est = open_trt(models, pose="decode", max_persons=3, match_cpu_rounding=True)
    model = est.model
    assert model.chunk == 2 and model.chunk_stride["pose:keypoints"] == 512 and model.chunk_stride["pose:scores"] == 256
    image = photo("000000197388.jpg")
    want, got = cpu(image), est(image)
    assert len(got.persons) == len(want.persons) == 3
    pipelines_agree(list(zip(want.persons, got.persons)))
    est.close()


def test_c4_data_dependent_output_shapes_are_refused_in_one_line(trt, tmp_path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("where", TensorProto.INT64, [4, "detections"])
    graph = helper.make_graph([helper.make_node("NonZero", ["input"], ["where"])], "dds", [x], [y])
    path = tmp_path / "dds.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    engine = trt_backend.build_engine(path, tmp_path / "dds.engine", gpu=ORIN, progress=False,
                                      timing_cache=False).engine_path
    with pytest.raises(EngineError, match="data-dependent shape") as info:
        trt_backend.TensorRTEngine(engine)
    assert "\n" not in str(info.value)
    with pytest.raises(RtmwEdgeError, match="fixed, known output shapes"):
        KK.plan_slot(det_input_shape=(1, 3, 4, 4), det_outputs={"where": ((4, -1), "int64")}, num_candidates=1,
                     max_persons=1, pose_input_wh=(4, 4), pose_outputs={}, num_keypoints=1, capacity=1, has_3d=False)


# ------------------------------------------------------------------------------------------ W: wrong results
@pytest.mark.parametrize("emu", ["eager-7", "lazy"], indirect=True)
def test_w1_each_slot_stream_has_its_own_execution_contexts(emu, models):
    est = open_trt(models)
    images = [photo(n) for n in ("human-pose.jpg", "000000040083.jpg", "000000197388.jpg", "human-pose.jpg")]
    serial = [est(im) for im in images]
    assert len(est.slots) == 1                                              # one frame at a time: one slot
    for want, (_, got) in zip(serial, est.stream(images)):
        same_results(want, got)
    contexts = [(s.stream.handle, s.det_ctx, s.pose_ctx) for s in est.slots]
    assert all(det.stream == pose.stream == handle for handle, det, pose in contexts)
    raw = {id(c._context) for _, det, pose in contexts for c in (det, pose)}
    assert len(raw) == 4                                                    # four IExecutionContexts
    assert {c.profile for _, _, c in contexts} == {0, 1}                    # one optimization profile each
    est.close()


def test_w1_a_context_shared_by_both_slot_streams_is_caught(emu, models, monkeypatch):
    """The defect itself, injected: one IExecutionContext under both slots' detector contexts. Its scratch
    memory, written by every enqueue, makes the two slots' detector runs a race the emulator names."""
    original = trt_backend.TensorRTContext.__init__
    first = {}

    def share(self, engine, stream, scratch=None):
        original(self, engine, stream, scratch)
        self._context = first.setdefault(id(engine), self._context)
    monkeypatch.setattr(trt_backend.TensorRTContext, "__init__", share)
    est = open_trt(models)
    images = [photo("human-pose.jpg")] * 3
    with pytest.raises(EmulationError, match="data race .*TensorRT enqueueV3 .*TensorRT enqueueV3"):
        list(est.stream(images))


def device_frame(emu, image: np.ndarray, producer):
    """The frame written into device memory by a copy queued on `producer` (not waited for)."""
    dev, pin = R.DeviceBuffer(image.nbytes), R.PinnedBuffer(image.nbytes)
    np.copyto(pin.array(np.uint8, image.shape), image)
    R.copy_htod_async(dev.ptr, pin.ptr, image.nbytes, R.as_stream_handle(producer))
    return dev, pin


class CaiFrame:
    """A CuPy/Numba-style object: a device pointer with `__cuda_array_interface__` naming its stream."""

    def __init__(self, ptr: int, shape, stream: int) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "|u1", "data": (ptr, False), "version": 3,
                                         "strides": None, "stream": stream}


def test_w2_device_frames_are_ordered_after_their_producer(emu, models):
    image = photo()
    est = open_trt(models)
    want = est(image)
    h, w = image.shape[:2]
    producer = R.Stream()
    dev, pin = device_frame(emu, image, producer)                              # named producer stream
    same_results(want, est.infer_device(P.DeviceFrame(dev.ptr, w, h, stream=producer)))
    producer.synchronize()
    dev2, pin2 = device_frame(emu, image, 0)                                   # legacy default stream, unnamed
    same_results(want, est.infer_device(P.DeviceFrame(dev2.ptr, w, h)))
    dev3, pin3 = device_frame(emu, image, producer)                            # the stream in the CAI
    same_results(want, est.infer_device(P.DeviceFrame(CaiFrame(dev3.ptr, (h, w, 3), producer.handle), w, h)))
    est.close()
    for buf in (dev, pin, dev2, pin2, dev3, pin3):
        buf.free()
    producer.close()


def test_w2_a_frame_read_without_waiting_for_its_producer_is_caught(emu, models, monkeypatch):
    """The defect itself, injected: the producer's stream not waited for."""
    image = photo()
    est = open_trt(models)
    producer = R.Stream()
    dev, _ = device_frame(emu, image, producer)
    monkeypatch.setattr(R.Stream, "wait", lambda self, event: None)
    with pytest.raises(EmulationError, match="data race"):
        est.infer_device(P.DeviceFrame(dev.ptr, image.shape[1], image.shape[0], stream=producer))


def test_w3_a_new_camera_gets_a_new_graph(emu, models):
    """The intrinsics are kernel arguments baked into a captured graph: a camera change must capture anew, and the
    decode kernel that runs must carry the new values."""
    image = photo()
    est = open_trt(models, cuda_graphs=True, camera=G.Camera(800.0, 800.0))
    for _ in range(3):
        est(image)
    assert est.slots[0].graphs.captures == 1
    est.camera = G.Camera(1500.0, 1400.0, 300.0, 200.0)
    est(image)
    est(image)
    decode = [v for k, v in emu.launched if k == "simcc_decode_to_image"][-1]
    assert (decode["fx"], decode["fy"], decode["cx"], decode["cy"]) == (1500.0, 1400.0, 300.0, 200.0)
    assert est.slots[0].graphs.captures == 2
    est.close()


def test_w4_a_frame_in_flight_keeps_its_slot(emu, models):
    image = photo()
    est = open_trt(models)
    frames = est.stream([image, image, image])
    next(frames)                                                                # frames still in flight
    with pytest.raises(RtmwEdgeError, match="in flight"):
        est(image)
    with pytest.raises(RtmwEdgeError, match="in flight"):
        est.detect(image)
    frames.close()                                                              # leaving early frees the slots
    assert len(est(image).persons) == 1
    est.close()


# ------------------------------------------------------------------------------------------------ S: slow
@pytest.mark.parametrize("integrated", [False, True])
def test_s2_host_waits_sleep_on_an_integrated_gpu_and_frames_go_zero_copy(monkeypatch, trt, models, integrated):
    emu = Emulator(seed=5, integrated=integrated).install(monkeypatch, trt=trt)
    est = open_trt(models)
    assert est.blocking_sync is integrated and est.zero_copy is integrated
    est(photo())                                                                # the slot is made on first use
    first = len(emu.log)
    got = est(photo())
    copies = [c for c in emu.log[first:] if c.startswith("cudaMemcpy")]
    assert (copies == []) is integrated                                         # mapped memory: no copies at all
    waited = [emu.events[int(e.handle)] for s in est.slots for e in (s.counted, s.done)]
    assert len(waited) == 2 and all(e.blocking is integrated for e in waited)
    kinds = {emu.find(s.host.ptr).kind for s in est.slots}
    assert kinds == ({"mapped"} if integrated else {"pinned"})
    assert len(got.persons) == 1 and np.isfinite(got.persons[0].keypoints).all()
    est.close()
    assert not any(emu.leaks().values())


def test_s5_graphs_of_rotating_frame_buffers_stay_bounded(emu, models, monkeypatch):
    monkeypatch.setattr(P, "GRAPHS_PER_SLOT", 2)
    image = photo()
    h, w = image.shape[:2]
    est = open_trt(models, cuda_graphs=True)
    buffers = [device_frame(emu, image, 0) for _ in range(5)]
    R.rt("cudaDeviceSynchronize")
    for _ in range(2):
        for dev, _ in buffers:                                                  # a decoder rotating 5 buffers
            assert len(est.infer_device(P.DeviceFrame(dev.ptr, w, h, stream=None)).persons) == 1
    graphs = est.slots[0].graphs
    assert len(graphs.graphs) <= 2 and graphs.evictions >= 3
    assert emu.leaks()["graph_execs"] <= 2
    est.close()
    assert emu.leaks()["graph_execs"] == 0


def test_s6_tensorrt_run_stages_host_arrays_in_pinned_memory(emu, models):
    import onnxruntime as ort

    engine = trt_backend.TensorRTEngine(models["pose"])
    x = np.random.default_rng(0).normal(size=(2, 3, 256, 192)).astype(np.float32)
    got = engine.run(x)
    want = ort.InferenceSession(str(models["pose_onnx"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_allclose(got["simcc_x"], want[0], rtol=1e-5, atol=1e-6)
    assert emu.stats["pageable_copies"] == 0                                    # DMA from pinned staging only
    engine.close()
    assert not any(emu.leaks().values())


# ----------------------------------------------------------------------------------------------- Y: hygiene
def test_y1_a_count_outside_the_buffers_is_an_error_not_an_overrun(monkeypatch, trt, models):
    def corrupt(kernel, launch, values):
        emu.kernels().launch(kernel, launch, KK.KernelArgs(kernel, values))
        if kernel == "detector_select":
            R.np.frombuffer((R.ctypes.c_int32 * 4).from_address(values["header"]), np.int32)[0] = 500
    emu = Emulator(seed=1, kernel_runner=corrupt).install(monkeypatch, trt=trt)
    est = open_trt(models)
    with pytest.raises(RtmwEdgeError, match="reported 500 person"):
        est(photo())


def test_y2_every_entry_selects_the_pipelines_device_in_the_calling_thread(monkeypatch, trt, models):
    emu = Emulator(seed=2, devices=2).install(monkeypatch, trt=trt)
    R.use_device(1)
    est = open_trt(models, device=1)
    R.use_device(0)
    results, errors = [], []

    def worker():                                    # a fresh thread: its current device is 0 until told
        try:
            results.append(est(photo()))
            results.extend(r for _, r in est.stream([photo()]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert not errors, errors
    assert [len(r.persons) for r in results] == [1, 1]
    assert {s.device for s in emu.streams.values() if s is not emu.legacy and not s.destroyed} == {1}
    est.close()


def test_y3_close_destroys_contexts_engines_and_buffers(emu, models, trt):
    est = open_trt(models)
    est(photo())
    engines = [est.model.det_engine, est.model.pose_engine]
    fake_engines = [e._engine for e in engines]
    est.close()
    assert all(e._engine is None and e._contexts == [] for e in engines)
    assert all(fe._live_contexts == 0 for fe in fake_engines)                  # every context destroyed
    assert not any(emu.leaks().values()), emu.leaks()
    engine = trt_backend.TensorRTEngine(models["pose"])                        # the engine alone: a user's context
    stream = R.Stream()
    context = engine.create_context(stream.handle)
    fake = engine._engine
    engine.close()
    assert fake._live_contexts == 0 and context._context is None and engine._engine is None
    stream.close()


def test_y4_a_failed_capture_is_not_retried_and_the_frame_still_runs(emu, models, monkeypatch):
    image = photo()
    original = trt_backend.TensorRTContext.infer_async

    def refuse_in_capture(self, inputs, outputs, batch):
        if emu.is_capturing(self.stream):
            raise EngineError("this engine cannot be captured")
        return original(self, inputs, outputs, batch)
    monkeypatch.setattr(trt_backend.TensorRTContext, "infer_async", refuse_in_capture)
    eager = open_trt(models)
    want = eager(image)
    eager.close()
    est = open_trt(models, cuda_graphs=True)
    for _ in range(5):
        same_results(want, est(image))
    assert emu.stats["captures"] == 1 and len(est.slots[0].graphs.failed) == 1
    assert emu.leaks()["graphs"] == 0
    est.close()


def test_y4_graph_close_destroys_the_graph_even_when_the_exec_fails(emu, monkeypatch):
    stream = R.Stream()
    graph = R.CudaGraph(stream, lambda s: None)
    monkeypatch.setattr(type(emu.runtime), "_cudaGraphExecDestroy",
                        lambda self, e: (_ for _ in ()).throw(RuntimeError("driver went away")))
    graph.close()
    assert emu.leaks()["graphs"] == 0


# ------------------------------------------------------------------------------- the same on a non-TensorRT engine
@pytest.mark.parametrize("pose_engine", ["onnxruntime-gpu", "torch"])
def test_deferred_engines_run_the_two_slot_pipeline_in_order(monkeypatch, models, pose_engine):
    """The project's other device engines — onnxruntime-gpu (I/O binding) and PyTorch (the zoo's module) on the
    CPU, not graph-capturable — as deferred work under the lazy policy: two frames in flight, results in order
    and equal to one-at-a-time, one context per slot stream."""
    emu = Emulator(seed=9, policy="lazy").install(monkeypatch)
    det = OrtDeviceEngine(emu, RAWHEAD, max_batch=1)
    make = OrtDeviceEngine if pose_engine == "onnxruntime-gpu" else TorchDeviceEngine
    pose = make(emu, models["pose_onnx"], max_batch=4)
    est = P.GpuPoseEstimator(RAWHEAD, models["pose_onnx"], det_engine=det, pose_engine=pose, cuda_graphs=True)
    assert not est.cuda_graphs                                                  # not capturable: stays eager
    images = [photo(n) for n in ("000000040083.jpg", "human-pose.jpg", "000000197388.jpg")]
    serial = [est(im) for im in images]
    got = list(est.stream([(im, i, 0.5 * i) for i, im in enumerate(images)]))
    assert [r.frame for _, r in got] == [0, 1, 2] and [r.timestamp for _, r in got] == [0.0, 0.5, 1.0]
    for want, (_, r) in zip(serial, got):
        same_results(want, r)
    for engine in (det, pose):
        assert len({id(c) for c in engine.contexts}) == 2 and {c.stream for c in engine.contexts} == {
            s.stream.handle for s in est.slots}
    est.close()

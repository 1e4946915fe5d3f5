"""The torch-cuda engine (`backends/torch_cuda.py`): the zoo's PyTorch model a project export was made from, rebuilt
from the export's metadata, checked on the CPU (torch device "cpu") against the export itself on ONNX Runtime —
real RTMDet-nano weights on the shared photos, a pose model with live activations (He-initialised convolutions:
PyTorch's default init lets the activations vanish, where any two graphs agree), FP16 — and the refusals: foreign
files, INT8, --nms, weights that cannot be rebuilt or do not match."""

from __future__ import annotations

import ctypes
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import SHARED

from rtmw_edge import geometry as G
from rtmw_edge.backends import load_engine, run_chunked
from rtmw_edge.backends.device import HostEngine
from rtmw_edge.backends.torch_cuda import TorchCudaEngine
from rtmw_edge.cli import main
from rtmw_edge.downloads import checkpoints_dir
from rtmw_edge.errors import RtmwEdgeError, UsageError
from rtmw_edge.export import export_onnx
from rtmw_edge.models import create_model
from rtmw_edge.models.checkpoint import save_checkpoint
from rtmw_edge.onnx_meta import read_metadata, write_metadata
from rtmw_edge.zoo import get_spec

RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
IMAGES = sorted((SHARED / "images").glob("*.jpg"))
POSE = "rtmpose-t-256x192"


def lively_pose(seed: int):
    """rtmpose-t with He-initialised convolutions and non-trivial BatchNorms: activations of order 0.1 all the way
    to the head, so a wrong weight, a missing fold or a wrong precision shows in the outputs."""
    torch.manual_seed(seed)
    model = create_model(POSE)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def onnxruntime_outputs(path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Exports of four kinds of weights: a checkpoint (pose, FP32 with flip test and FP16), an in-memory model
    with the official RTMDet-nano weights (detector), a random-init seed (pose)."""
    from onnx_weights import load_folded_rtmdet

    tmp = tmp_path_factory.mktemp("torch_engine")
    pose = lively_pose(0)
    ckpt = save_checkpoint(pose, tmp / "pose.pth")
    det = create_model("rtmdet-nano-person")
    load_folded_rtmdet(det, RAWHEAD)
    return {"tmp": tmp, "ckpt": ckpt, "pose_model": pose, "det_model": det,
            "flip": export_onnx(POSE, tmp / "flip.onnx", checkpoint=ckpt, flip_test=True, progress=False),
            "fp16": export_onnx(POSE, tmp / "fp16.onnx", checkpoint=ckpt, precision="fp16", progress=False),
            "det": export_onnx("rtmdet-nano-person", tmp / "det.onnx", model=det, progress=False),
            "seeded": export_onnx(POSE, tmp / "seeded.onnx", random_init=True, seed=5, decode=True, progress=False)}


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(0).standard_normal((2, 3, 256, 192)).astype(np.float32)


def test_export_records_how_its_weights_are_rebuilt(made):
    from rtmw_edge.downloads import sha256_file
    from rtmw_edge.export import weights_sha256

    flip, det, seeded = (read_metadata(made[k]) for k in ("flip", "det", "seeded"))
    assert flip["weights"] == {"from": "checkpoint", "seed": None, "sha256": weights_sha256(made["pose_model"])}
    assert flip["checkpoint_sha256"] == sha256_file(made["ckpt"])
    assert det["weights"] == {"from": "model", "seed": None, "sha256": weights_sha256(made["det_model"])}
    assert seeded["weights"]["from"] == "random-init" and seeded["weights"]["seed"] == 5
    assert weights_sha256(lively_pose(1)) != flip["weights"]["sha256"]


def test_pose_export_from_a_checkpoint_runs_like_onnxruntime(made, crops):
    """Flip test in the graph (mirrored batch, keypoint swap, bin mirror): SimCC logits of order 10 agree to 1e-4."""
    engine = TorchCudaEngine(made["flip"], device="cpu", checkpoint=made["ckpt"])
    assert engine.half_regions == [] and engine.output_names == ["simcc_x", "simcc_y"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in engine.module.modules())   # folded, as exported
    got, want = engine.run(crops), onnxruntime_outputs(made["flip"], crops)
    for name in engine.output_names:
        assert got[name].shape == want[name].shape == engine.output_shape(name, 2)
        assert np.abs(want[name]).max() > 5.0  # live activations: the comparison means something
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0, err_msg=name)


def test_fp16_export_runs_its_fp16_regions_in_half_precision(made, crops):
    engine = TorchCudaEngine(made["fp16"], device="cpu", checkpoint=made["ckpt"])
    assert engine.half_regions == ["model.backbone", "model.head.final_layer"]   # export.FP16_PREFIXES present here
    assert engine.module.model.backbone.stem[0].conv.weight.dtype == torch.float16
    assert {p.dtype for p in engine.module.model.head.mlp.parameters()} == {torch.float32}  # the GAU side: FP32
    crops = crops[:1]  # PyTorch's half-precision CPU kernels are slow
    got, want = engine.run(crops), onnxruntime_outputs(made["fp16"], crops)
    plain = TorchCudaEngine(made["fp16"], device="cpu", checkpoint=made["ckpt"])
    for sub in plain.module.modules():       # the same graph all in FP32: half precision shows as ~1e-3 differences
        sub._forward_pre_hooks.clear()
        sub._forward_hooks.clear()
    plain.module.float()
    reference = plain.run(crops)
    for name in engine.output_names:
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want[name], atol=3e-2, rtol=0, err_msg=name)
        assert np.abs(got[name] - reference[name]).max() > 1e-3


def test_real_detector_weights_on_the_shared_photos_run_like_onnxruntime(made):
    if not IMAGES:
        pytest.skip("shared photos not found")
    spec = get_spec("rtmdet-nano-person")
    x = np.concatenate([G.normalize_to_nchw(G.letterbox(cv2.imread(str(p)), spec.input_size)[0][None], spec.mean,
                                            spec.std, False) for p in IMAGES[:3]]).astype(np.float32)
    engine = TorchCudaEngine(made["det"], device="cpu", model=made["det_model"])
    got, want = engine.run(x), onnxruntime_outputs(made["det"], x)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4, rtol=0)
    people = want["scores"] > 0.05    # candidates of near-equal low scores may come out of the top-k in any order
    assert people.sum(axis=1).min() >= 1 and people.sum() > 20
    np.testing.assert_allclose(got["boxes"][people], want["boxes"][people], atol=0.05, rtol=0)


def test_random_init_export_is_rebuilt_from_its_seed(made):
    x = np.random.default_rng(1).standard_normal((2, 3, 256, 192)).astype(np.float32)
    engine = TorchCudaEngine(made["seeded"], device="cpu")
    got, want = engine.run(x), onnxruntime_outputs(made["seeded"], x)
    np.testing.assert_array_equal(got["keypoints"], want["keypoints"])
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4, rtol=0)
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()   # rebuilding under the recorded seed leaves the caller's generator alone
    TorchCudaEngine(made["seeded"], device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())


def test_the_cached_official_checkpoint_is_found_by_its_sha256(made, crops, monkeypatch, tmp_path):
    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path))
    with pytest.raises(RtmwEdgeError, match=f"rtmw-edge models download {POSE}"):
        TorchCudaEngine(made["flip"], device="cpu")
    checkpoints_dir().mkdir(parents=True)
    shutil.copy(made["ckpt"], checkpoints_dir() / get_spec(POSE).checkpoint_filename)
    cached = TorchCudaEngine(made["flip"], device="cpu")
    want = onnxruntime_outputs(made["flip"], crops[:1])
    np.testing.assert_allclose(cached.run(crops[:1])["simcc_x"], want["simcc_x"], atol=1e-4, rtol=0)


def _with_metadata(src, dst, **changes):
    model = onnx.load(str(src))
    meta = {k: v for k, v in read_metadata(model).items() if k != "schema_version"}
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        meta.pop(key)
    write_metadata(model, meta)
    onnx.save(model, str(dst))
    return dst


def test_what_cannot_be_rebuilt_is_refused_in_one_line(made, tmp_path):
    tmp = made["tmp"]
    cases = [
        (RAWHEAD, {}, "foreign ONNX.*--backend tensorrt.*onnxruntime-gpu"),
        (_with_metadata(made["flip"], tmp_path / "imported.onnx", imported={"from": "sdk"}), {}, "foreign ONNX"),
        (_with_metadata(made["det"], tmp_path / "int8.onnx", precision="int8"), {}, "int8 graph.*onnxruntime-gpu"),
        (_with_metadata(made["det"], tmp_path / "nms.onnx", nms=True), {}, "without --nms"),
        (made["det"], {}, "re-export it with --checkpoint or --random-init"),                     # an in-memory model
        (_with_metadata(made["seeded"], tmp_path / "old.onnx", weights=None), {}, "re-export"),  # before the records
        (made["det"], {"model": create_model("rtmdet-nano-person")}, "differ from those it was exported with"),
        (made["flip"], {"checkpoint": save_checkpoint(lively_pose(1), tmp / "other.pth")}, "is not the checkpoint"),
    ]
    for path, options, message in cases:
        with pytest.raises(RtmwEdgeError, match=message) as caught:
            TorchCudaEngine(path, device="cpu", **options)
        assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="give no checkpoint"):
        TorchCudaEngine(made["seeded"], device="cpu", checkpoint=made["ckpt"])


def _buffer(array: np.ndarray):
    """Host memory standing in for a device buffer: (pointer, the array viewing it)."""
    raw = (ctypes.c_uint8 * array.nbytes)()
    view = np.frombuffer(raw, dtype=array.dtype).reshape(array.shape)
    view[...] = array
    return raw, ctypes.addressof(raw), view


def test_a_context_runs_over_the_pointers_it_is_given(made, crops):
    engine = TorchCudaEngine(made["flip"], device="cpu", checkpoint=made["ckpt"], max_batch=4)
    context = engine.create_context(1234)
    assert context.stream == 1234 and context.engine is engine and engine.graph_capturable is False
    keep, ptr_in, _ = _buffer(crops)
    outs = {n: _buffer(np.full(engine.output_shape(n, 2), np.nan, np.float32)) for n in engine.output_names}
    context.infer_async({"input": ptr_in}, {n: o[1] for n, o in outs.items()}, 2)
    want = engine.run(crops)
    for name in engine.output_names:
        np.testing.assert_array_equal(outs[name][2], want[name])
    only = _buffer(np.zeros(engine.output_shape("simcc_y", 2), np.float32))     # a subset of the outputs: only those
    context.infer_async({"input": ptr_in}, {"simcc_y": only[1]}, 2)
    np.testing.assert_array_equal(only[2], want["simcc_y"])
    with pytest.raises(RtmwEdgeError, match=r"batch 5 outside \[1, 4\]"):
        context.infer_async({"input": ptr_in}, {}, 5)
    engine._per_item["simcc_x"] = (17, 383)  # what the module gives is checked before anything is written
    with pytest.raises(RtmwEdgeError, match="output simcc_x is"):
        context.infer_async({"input": ptr_in}, {"simcc_x": outs["simcc_x"][1]}, 2)
    other = engine.create_context(5)
    other.close()
    with pytest.raises(RtmwEdgeError, match="closed"):
        other.infer_async({"input": ptr_in}, {}, 2)
    engine.close()
    with pytest.raises(RtmwEdgeError, match="closed"):
        context.infer_async({"input": ptr_in}, {}, 2)
    del keep


def test_host_engine_view_serves_the_cpu_pipeline(made, crops):
    host = HostEngine(TorchCudaEngine(made["flip"], device="cpu", checkpoint=made["ckpt"], max_batch=1))
    assert host.input_dims == (1, 3, 256, 192) and host.max_batch == 1 and host.input_name == "input"
    assert host.metadata["name"] == POSE and host.path == made["flip"]
    chunked = run_chunked(host, crops)                      # 2 crops through a max batch of 1
    whole = onnxruntime_outputs(made["flip"], crops)
    np.testing.assert_allclose(chunked["simcc_x"], whole["simcc_x"], atol=1e-4, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_torch_cuda_backend_without_a_gpu_says_so(made, capsys):
    with pytest.raises(RtmwEdgeError, match="CUDA build of PyTorch and a GPU"):
        load_engine(made["flip"], "torch-cuda")
    image = SHARED / "images" / "000000000785.jpg"
    if image.is_file():
        code = main(["run", str(image), "--det", str(made["det"]), "--pose", str(made["flip"]),
                     "--backend", "torch-cuda"])
        err = capsys.readouterr().err
        assert code == 1 and "GPU" in err and "Traceback" not in err


@pytest.mark.gpu
def test_a_context_on_a_cuda_stream_equals_the_host_run(made, crops):
    """On the GPU: device buffers and a stream of PyTorch's, the context enqueues there without a host sync."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    engine = TorchCudaEngine(made["flip"], checkpoint=made["ckpt"])
    stream = torch.cuda.Stream()
    x = torch.from_numpy(crops).cuda()
    outs = {n: torch.full(engine.output_shape(n, 2), float("nan"), device="cuda") for n in engine.output_names}
    context = engine.create_context(stream.cuda_stream)
    torch.cuda.synchronize()
    context.infer_async({"input": x.data_ptr()}, {n: t.data_ptr() for n, t in outs.items()}, 2)
    stream.synchronize()
    want = onnxruntime_outputs(made["flip"], crops)
    for name in engine.output_names:
        np.testing.assert_allclose(outs[name].cpu().numpy(), want[name], atol=1e-3, rtol=0)

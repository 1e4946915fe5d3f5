"""The PyTorch zoo against independent truth: official key lists and parameter counts, real RTMDet weights,
hand-computed maths, and checkpoint loading (round trips and every way a file can be wrong).

Big models are built once per test module: the `model` fixture is module-scoped and parametrised indirectly,
so pytest groups the tests of one model together and keeps a single model alive at a time.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import pathlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import SHARED
from onnx_weights import load_folded_rtmdet
from torch import nn

from rtmw_edge.errors import CheckpointError, RtmwEdgeError
from rtmw_edge.models import create_model
from rtmw_edge.models.checkpoint import load_checkpoint, save_checkpoint
from rtmw_edge.models.heads import RTMCCBlock, RTMWHead, ScaleNorm
from rtmw_edge.models.layers import ChannelAttention
from rtmw_edge.zoo import get_spec, list_models

ALL = list_models()
KEY_DIR = SHARED / "reference" / "state_dict_keys"
REF_NAMES = sorted((p.stem for p in KEY_DIR.glob("*.txt")), key=lambda n: ALL.index(n) if n in ALL else len(ALL))

# Parameter counts of the official models (independent truth: counted on the official mmpose / mmdet builds).
OFFICIAL_PARAMS = {
    "rtmw-m-256x192": 32_258_207,
    "rtmw-l-384x288": 57_354_295,
    "rtmw-x-256x192": 92_041_903,
    "rtmw3d-l-384x288": 57_501_751,
    "rtmpose-wb-l-384x288": 33_610_919,
    "rtmpose-m-256x192": 13_587_611,
    "rtmdet-nano-person": 994_423,
}
# Published counts, rounded to 0.01 M (READMEs; rtmw_facts §2.7 for RTMW / RTMW3D).
PUBLISHED_PARAMS_M = {
    "rtmpose-t-256x192": 3.34,
    "rtmpose-s-256x192": 5.47,
    "rtmpose-l-256x192": 27.66,
    "rtmdet-m-person": 24.66,
    "rtmw-l-256x192": 57.20,
    "rtmw-x-384x288": 92.20,
    "rtmw3d-x-384x288": 92.34,
}


# --------------------------------------------------------------------------------------------- helpers
def read_key_list(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """`key [d0, d1, ...]` lines of a reference list (`#` comments and blank lines skipped)."""
    entries = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, shape = line.partition(" ")
        dims = shape.strip().strip("[]").strip()
        entries.append((key, tuple(int(d) for d in dims.split(",")) if dims else ()))
    return entries


def module_tree_order(keys: list[str]) -> list[str]:
    """Rearrange dotted keys into nn.Module traversal order (the order of `state_dict()`).

    Build a tree from the dotted names; at each node emit its own leaf tensors first (in list order), then its
    child nodes in order of first appearance. Constructor-call order lists a module's own parameters after
    children created before them, and interleaves the entries of ModuleLists built side by side.
    """
    def new_node() -> dict:
        return {"leaves": [], "children": {}}

    root = new_node()
    for key in keys:
        *path, _leaf = key.split(".")
        node = root
        for part in path:
            node = node["children"].setdefault(part, new_node())
        node["leaves"].append(key)

    ordered: list[str] = []

    def emit(node: dict) -> None:
        ordered.extend(node["leaves"])
        for child in node["children"].values():
            emit(child)

    emit(root)
    return ordered


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and BatchNorm statistic from a seeded generator, at sane scales."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:  # gains initialised to 1 stay near 1, biases near 0
                p.copy_((1.0 if bool(torch.all(p == 1)) else 0.0) + 0.1 * noise)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
    return model


def fixed_input(spec, batch: int = 1, seed: int = 0) -> torch.Tensor:
    w, h = spec.input_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(model(x))


def assert_outputs_equal(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> None:
    assert len(a) == len(b)
    for ta, tb in zip(a, b):
        assert torch.equal(ta, tb)


def official_meta() -> dict:
    """A meta like official files' (numpy arrays and numpy scalars inside dataset_meta)."""
    return {
        "mmpose_version": "1.3.2",
        "epoch": 270,
        "dataset_meta": {
            "dataset_name": "coco",
            "num_keypoints": np.int64(17),
            "flip_indices": np.array([0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]),
            "sigmas": np.linspace(0.025, 0.107, 17, dtype=np.float32),
            "weight": np.float64(1.5),
            "upper_body_ids": [np.int32(i) for i in range(11)],
            "flag": np.bool_(True),
        },
    }


class BenignMeta:
    """A custom class in meta: not on the weights-only allow-list, harmless when trusted."""

    def __init__(self, note: str) -> None:
        self.note = note


class _Touch:
    """Unpickling this runs pathlib.Path.touch(marker): stands for arbitrary code in a hostile file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model(request) -> nn.Module:
    """The registered model `request.param`, built once for all tests of this module that use it."""
    return create_model(request.param)


@dataclass
class SavedCheckpoint:
    path: Path                         # mmpose layout, numpy values in meta
    state: dict[str, torch.Tensor]     # what it holds (a copy; tests may edit it)
    expected: tuple[torch.Tensor, ...]  # the model's outputs on x
    x: torch.Tensor


@pytest.fixture(scope="module")
def saved_t(tmp_path_factory) -> SavedCheckpoint:
    """A randomised rtmpose-t checkpoint with the model's outputs on a fixed input."""
    ref = randomize_(create_model("rtmpose-t-256x192"), seed=1)
    x = fixed_input(ref.spec, seed=2)
    path = save_checkpoint(ref, tmp_path_factory.mktemp("ckpt") / "rtmpose-t.pth", official_meta())
    return SavedCheckpoint(path, ref.state_dict(), run(ref, x), x)


@pytest.fixture
def ckpt(saved_t) -> SavedCheckpoint:
    """The saved checkpoint with a fresh copy of its state dict for the test to edit."""
    return SavedCheckpoint(saved_t.path, {k: v.clone() for k, v in saved_t.state.items()}, saved_t.expected, saved_t.x)


# --------------------------------------------------------------------------------------------- module tree / keys
def test_module_tree_order_on_hand_made_keys():
    keys = [
        "a.conv.weight",
        "a.lists.0.w",
        "a.other.0.w",
        "a.lists.1.w",
        "a.other.1.w",
        "a.gamma",
        "top",
        "a.conv.bias",
        "b.x",
    ]
    assert module_tree_order(keys) == [
        "top",
        "a.gamma",
        "a.conv.weight",
        "a.conv.bias",
        "a.lists.0.w",
        "a.lists.1.w",
        "a.other.0.w",
        "a.other.1.w",
        "b.x",
    ]
    assert module_tree_order([]) == []
    assert module_tree_order(module_tree_order(keys)) == module_tree_order(keys)  # idempotent


def test_module_tree_order_matches_pytorch_traversal():
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.o = nn.Linear(2, 2, bias=False)
            self.gamma = nn.Parameter(torch.zeros(2))
            self.left = nn.ModuleList([nn.BatchNorm1d(2), nn.BatchNorm1d(2)])
            self.right = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    state_keys = list(Toy().state_dict())
    constructor_order = ["o.weight", "gamma"]  # gamma created after o, listed after it
    for i in range(2):  # the two ModuleLists listed interleaved, entry by entry
        constructor_order += [f"left.{i}.{leaf}" for leaf in
                              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        constructor_order += [f"right.{i}.weight", f"right.{i}.bias"]
    assert sorted(constructor_order) == sorted(state_keys)
    assert constructor_order != state_keys
    assert module_tree_order(constructor_order) == state_keys


def test_reference_key_lists_are_present(shared):
    assert set(REF_NAMES) >= {"rtmw-m-256x192", "rtmw-l-256x192", "rtmw-x-256x192", "rtmw-l-384x288",
                              "rtmw-x-384x288", "rtmw3d-l-384x288", "rtmw3d-x-384x288"}, KEY_DIR
    assert set(REF_NAMES) <= set(ALL)


@pytest.mark.parametrize("model", REF_NAMES, indirect=True)
def test_state_dict_matches_official_keys(model):
    reference = read_key_list(KEY_DIR / f"{model.spec.name}.txt")
    ref_keys = [k for k, _ in reference]
    assert len(ref_keys) == len(set(ref_keys)), "duplicate keys in the reference list"
    state = model.state_dict()

    missing = [k for k in ref_keys if k not in state]
    extra = [k for k in state if k not in set(ref_keys)]
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert len(state) == len(ref_keys)
    wrong = [(k, list(state[k].shape), list(shape)) for k, shape in reference if tuple(state[k].shape) != shape]
    assert not wrong, f"shape mismatches (key, ours, official): {wrong[:5]}"
    assert all(state[k].shape == () for k in ref_keys if k.endswith("num_batches_tracked"))
    assert list(state) == module_tree_order(ref_keys)


# --------------------------------------------------------------------------------------------- parameter counts
def test_count_tables_name_registered_models():
    assert set(OFFICIAL_PARAMS) <= set(ALL)
    assert set(PUBLISHED_PARAMS_M) <= set(ALL)


@pytest.mark.parametrize("model", list(OFFICIAL_PARAMS), indirect=True)
def test_official_parameter_count(model):
    assert param_count(model) == OFFICIAL_PARAMS[model.spec.name]


@pytest.mark.parametrize("model", list(PUBLISHED_PARAMS_M), indirect=True)
def test_published_parameter_count(model):
    assert abs(param_count(model) / 1e6 - PUBLISHED_PARAMS_M[model.spec.name]) <= 0.01 + 1e-9


def test_shared_conv_weights_are_counted_once():
    model = create_model("rtmdet-m-person")  # share_conv=True: one conv per tower position, a BN per level
    head = model.bbox_head
    assert head.cls_convs[1][0].conv is head.cls_convs[0][0].conv
    assert head.cls_convs[1][0].bn is not head.cls_convs[0][0].bn
    naive = sum(t.numel() for k, t in model.state_dict(keep_vars=True).items() if isinstance(t, nn.Parameter))
    assert param_count(model) < naive


@pytest.mark.parametrize("model", ALL, indirect=True)
def test_registry_params_equal_built_model(model):
    assert model.spec.params == param_count(model)


@pytest.mark.parametrize("model", ALL, indirect=True)
def test_create_model_returns_eval_mode_with_spec(model, request):
    name = request.node.callspec.params["model"]
    assert model.spec.name == name
    assert model.spec is get_spec(name)
    assert not any(m.training for m in model.modules())


# --------------------------------------------------------------------------------------------- output shapes
@pytest.mark.parametrize("model", ALL, indirect=True)
def test_output_shapes(model):
    spec = model.spec
    w, h = spec.input_size
    out = run(model, torch.zeros(2, 3, h, w))
    if spec.is_pose:
        k = spec.num_keypoints
        expected = [(2, k, 2 * w), (2, k, 2 * h)] + ([(2, k, 2 * w)] if spec.task == "pose3d" else [])
        assert [tuple(t.shape) for t in out] == expected
        assert [e[-1] for e in expected] == list(spec.simcc_bins)
        assert all(torch.isfinite(t).all() for t in out)
    else:
        assert spec.task == "detector"
        cls_scores, bbox_preds = out
        assert len(cls_scores) == len(bbox_preds) == 3
        for s, cls, reg in zip((8, 16, 32), cls_scores, bbox_preds):
            assert tuple(cls.shape) == (2, 1, h // s, w // s)
            assert tuple(reg.shape) == (2, 4, h // s, w // s)


# --------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ["rtmpose-t-256x192", "rtmw-m-256x192"])
def test_checkpoint_round_trip_is_bit_exact(name, tmp_path):
    ref = randomize_(create_model(name), seed=7)
    x = fixed_input(ref.spec, seed=3)
    expected = run(ref, x)
    assert all(torch.isfinite(t).all() and t.std() > 0 for t in expected)
    path = save_checkpoint(ref, tmp_path / f"{name}.pth", official_meta())
    del ref

    fresh = run(create_model(name), x)
    assert not torch.equal(fresh[0], expected[0])  # the weights, not the architecture, make the outputs
    loaded = create_model(name, path)
    assert not loaded.training and loaded.spec.name == name
    assert_outputs_equal(run(loaded, x), expected)


def test_load_report_carries_numpy_meta(ckpt):
    report = load_checkpoint(create_model("rtmpose-t-256x192"), ckpt.path, model_name="rtmpose-t-256x192")
    assert report.ok and not report.ignored
    assert report.loaded == len(create_model("rtmpose-t-256x192").state_dict())
    meta = report.meta["dataset_meta"]
    assert meta["flip_indices"].tolist() == official_meta()["dataset_meta"]["flip_indices"].tolist()
    assert meta["sigmas"].dtype == np.float32 and meta["num_keypoints"] == 17


def test_bare_state_dict_loads_identically(ckpt, tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(ckpt.state, bare)
    assert_outputs_equal(run(create_model("rtmpose-t-256x192", bare), ckpt.x), ckpt.expected)


@pytest.mark.parametrize("prefix, teacher", [("module.", False), ("student.", False), ("student.", True)])
def test_wrapped_state_dict_loads_identically(ckpt, tmp_path, prefix, teacher):
    state = ckpt.state
    wrapped = {prefix + k: v for k, v in state.items()}
    if teacher:  # a distillation file keeps its teacher beside the student
        wrapped.update({"teacher." + k: torch.zeros_like(v) for k, v in list(state.items())[:5]})
        wrapped["teacher.head.extra.weight"] = torch.zeros(3, 3)
    file = tmp_path / "wrapped.pth"
    torch.save({"state_dict": wrapped, "meta": official_meta()}, file)
    assert_outputs_equal(run(create_model("rtmpose-t-256x192", file), ckpt.x), ckpt.expected)


def test_distillation_extras_are_ignored_and_reported(ckpt, tmp_path):
    state, expected, x = ckpt.state, ckpt.expected, ckpt.x
    state["head.down1.weight"] = torch.ones(4, 4)
    state["head.down2.bias"] = torch.ones(4)
    file = tmp_path / "extras.pth"
    torch.save({"state_dict": state, "meta": {}}, file)
    model = create_model("rtmpose-t-256x192")
    report = load_checkpoint(model, file, model_name="rtmpose-t-256x192")
    assert sorted(report.ignored) == ["head.down1.weight", "head.down2.bias"]
    assert report.ok and not report.unexpected and not report.missing
    assert_outputs_equal(run(model.eval(), x), expected)
    assert_outputs_equal(run(create_model("rtmpose-t-256x192", file), x), expected)


def test_other_architecture_names_a_mismatching_key_and_shapes(tmp_path):
    small, tiny = create_model("rtmpose-s-256x192"), create_model("rtmpose-t-256x192")
    file = save_checkpoint(small, tmp_path / "rtmpose-s.pth")
    with pytest.raises(CheckpointError) as info:
        create_model("rtmpose-t-256x192", file)
    msg = str(info.value)
    assert isinstance(info.value, RtmwEdgeError)
    assert "rtmpose-t-256x192" in msg
    found = re.findall(r"([\w.]+): checkpoint \[([\d, ]*)\] vs model \[([\d, ]*)\]", msg)
    assert found, msg
    s_state, t_state = small.state_dict(), tiny.state_dict()
    for key, ckpt_shape, model_shape in found:
        assert [int(d) for d in ckpt_shape.split(",")] == list(s_state[key].shape)
        assert [int(d) for d in model_shape.split(",")] == list(t_state[key].shape)
    assert "backbone.stem.0.conv.weight: checkpoint [16, 3, 3, 3] vs model [12, 3, 3, 3]" in msg


def test_missing_key_is_named(ckpt, tmp_path):
    state = ckpt.state
    del state["head.gau.gamma"]
    file = tmp_path / "missing.pth"
    torch.save({"state_dict": state}, file)
    with pytest.raises(CheckpointError, match="missing") as info:
        create_model("rtmpose-t-256x192", file)
    assert "head.gau.gamma" in str(info.value)


def test_unexpected_key_is_named(ckpt, tmp_path):
    state = ckpt.state
    state["head.cls_w.weight"] = torch.zeros(2, 2)
    file = tmp_path / "unexpected.pth"
    torch.save({"state_dict": state}, file)
    with pytest.raises(CheckpointError, match="unexpected") as info:
        create_model("rtmpose-t-256x192", file)
    assert "head.cls_w.weight" in str(info.value)


def test_truncated_checkpoint(ckpt, tmp_path):
    file = tmp_path / "truncated.pth"
    file.write_bytes(ckpt.path.read_bytes()[:4096])
    with pytest.raises(CheckpointError) as info:
        create_model("rtmpose-t-256x192", file)
    assert str(file) in str(info.value)
    assert "\n" not in str(info.value)


TEXT_FILES = {"hello": "hello world\n", "sentence": "this is a text file\n", "words": "not a checkpoint",
              "json": '{"a": 1}\n', "abc": "abc"}


@pytest.mark.parametrize("text", list(TEXT_FILES.values()), ids=list(TEXT_FILES))
def test_text_file_raises_checkpoint_error(tmp_path, text):
    file = tmp_path / "notes.pth"
    file.write_text(text)
    with pytest.raises(CheckpointError) as info:
        create_model("rtmpose-t-256x192", file)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("text", list(TEXT_FILES.values()), ids=list(TEXT_FILES))
def test_text_file_error_does_not_suggest_trusting_it(tmp_path, text):
    file = tmp_path / "notes.pth"
    file.write_text(text)
    with pytest.raises(CheckpointError) as info:
        create_model("rtmpose-t-256x192", file)
    assert "--trust-checkpoint" not in str(info.value), "a text file holds no pickled object to trust"


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_model("rtmpose-t-256x192", tmp_path / "nope.pth")
    with pytest.raises(CheckpointError):
        create_model("rtmpose-t-256x192", tmp_path)  # a directory is no checkpoint either


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", ["touch", "system"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running(ckpt, tmp_path, payload, writer):
    marker = tmp_path / "pwned"
    evil = (_Touch if payload == "touch" else _System)(marker)
    obj = {"state_dict": ckpt.state, "meta": {"hook": evil}}
    file = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(obj, file)
    else:
        with open(file, "wb") as fh:
            pickle.dump(obj, fh)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        create_model("rtmpose-t-256x192", file)
    assert not marker.exists()


def test_trusted_checkpoint_with_custom_meta_class(ckpt, tmp_path):
    state, expected, x = ckpt.state, ckpt.expected, ckpt.x
    file = tmp_path / "custom-meta.pth"
    torch.save({"state_dict": state, "meta": {"note": BenignMeta("hello"), **official_meta()}}, file)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        create_model("rtmpose-t-256x192", file)
    assert_outputs_equal(run(create_model("rtmpose-t-256x192", file, trust_checkpoint=True), x), expected)
    report = load_checkpoint(create_model("rtmpose-t-256x192"), file, model_name="rtmpose-t-256x192", trust=True)
    assert isinstance(report.meta["note"], BenignMeta) and report.meta["note"].note == "hello"


# --------------------------------------------------------------------------------------------- hand-computed maths
def test_scale_norm_by_hand():
    norm = ScaleNorm(2)
    with torch.no_grad():
        norm.g.fill_(2.0)
    out = norm(torch.tensor([[3.0, 4.0]]))
    # ‖x‖ = 5, · 2^-½ → 5/√2; x / (5/√2) · g
    expected = torch.tensor([[3.0, 4.0]]) / (5 / math.sqrt(2)) * 2.0
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(out, torch.tensor([[0.6 * math.sqrt(2) * 2, 0.8 * math.sqrt(2) * 2]]))
    zero = norm(torch.zeros(1, 3, 2))  # the eps clamp keeps 0/0 away
    assert torch.equal(zero, torch.zeros(1, 3, 2))
    # below the clamp: ‖x‖·2^-½ = 3.5e-6 < eps = 1e-5, so the divisor is eps itself
    tiny = norm(torch.tensor([3e-6, 4e-6], dtype=torch.float64))
    torch.testing.assert_close(tiny, torch.tensor([0.3, 0.4], dtype=torch.float64) * 2.0)


def gau_reference(x, w_uv, w_o, gamma, beta, g, res_scale, s, e, attention="relu2", eps=1e-5):
    """rtmw_facts §3.3 in numpy (float64): ScaleNorm → SiLU(uv) → q, k = base·γ + β → relu(qk/√s)² → o."""
    d = x.shape[-1]
    xn = x / np.maximum(np.sqrt((x**2).sum(-1, keepdims=True)) * d**-0.5, eps) * g
    z = xn @ w_uv.T
    uv = z / (1 + np.exp(-z))
    u, v, base = uv[..., :e], uv[..., e:2 * e], uv[..., 2 * e:]
    q, k = base * gamma[0] + beta[0], base * gamma[1] + beta[1]
    qk = q @ np.swapaxes(k, -1, -2) / np.sqrt(s)
    if attention == "relu2":
        kernel = np.maximum(qk, 0) ** 2
    else:  # what a softmax attention would do instead
        kernel = np.exp(qk - qk.max(-1, keepdims=True))
        kernel /= kernel.sum(-1, keepdims=True)
    return res_scale * x + (u * (kernel @ v)) @ w_o.T, qk


def _tiny_gau(rng: np.random.Generator, dims=8, s=4, expansion=2, positive=False):
    gau = RTMCCBlock(dims, s, expansion).double()
    e = dims * expansion
    params = {
        "uv": rng.uniform(0, 0.5, (2 * e + s, dims)) if positive else rng.normal(0, 0.5, (2 * e + s, dims)),
        "o": rng.normal(0, 0.5, (dims, e)),
        "gamma": rng.uniform(0.5, 1.5, (2, s)) if positive else rng.normal(0, 1, (2, s)),
        "beta": np.zeros((2, s)) if positive else rng.normal(0, 0.5, (2, s)),
        "g": np.array([1.3]),
        "res": rng.uniform(0.5, 1.5, dims),
    }
    if positive:
        params["gamma"][1] = -params["gamma"][0]  # k = −q elementwise: q·k < 0 for every pair
    with torch.no_grad():
        gau.uv.weight.copy_(torch.from_numpy(params["uv"]))
        gau.o.weight.copy_(torch.from_numpy(params["o"]))
        gau.gamma.copy_(torch.from_numpy(params["gamma"]))
        gau.beta.copy_(torch.from_numpy(params["beta"]))
        gau.ln.g.copy_(torch.from_numpy(params["g"]))
        gau.res_scale.scale.copy_(torch.from_numpy(params["res"]))
    return gau.eval(), params, e


def test_gau_matches_numpy_reference():
    rng = np.random.default_rng(0)
    gau, p, e = _tiny_gau(rng)
    x = rng.normal(0, 1, (2, 5, 8))
    ours = gau(torch.from_numpy(x)).detach().numpy()
    ref, qk = gau_reference(x, p["uv"], p["o"], p["gamma"], p["beta"], p["g"], p["res"], s=4, e=e)
    assert (qk < 0).any() and (qk > 0).any()  # both sides of the ReLU are exercised
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    soft, _ = gau_reference(x, p["uv"], p["o"], p["gamma"], p["beta"], p["g"], p["res"], s=4, e=e,
                            attention="softmax")
    assert np.abs(ours - soft).max() > 1e-3


def test_gau_negative_scores_give_an_exact_zero_kernel():
    rng = np.random.default_rng(1)
    gau, p, e = _tiny_gau(rng, positive=True)
    x = rng.uniform(0.1, 1.0, (1, 4, 8))  # x > 0, W_uv ≥ 0 → base > 0 → q·k = −Σγ²·b_i·b_j < 0
    xt = torch.from_numpy(x)
    out = gau(xt)
    _, qk = gau_reference(x, p["uv"], p["o"], p["gamma"], p["beta"], p["g"], p["res"], s=4, e=e)
    assert (qk < 0).all()
    # squared ReLU: the kernel is exactly zero, so y = 0 and only the shortcut res_scale ⊙ x_in is left
    assert torch.equal(out, gau.res_scale.scale * xt)
    soft, _ = gau_reference(x, p["uv"], p["o"], p["gamma"], p["beta"], p["g"], p["res"], s=4, e=e,
                            attention="softmax")
    assert np.abs(soft - out.detach().numpy()).max() > 1e-3  # a softmax GAU would not vanish


def test_gau_shortcut_with_zero_output_projection():
    gau = RTMCCBlock(8, 4, 2)
    with torch.no_grad():
        gau.o.weight.zero_()
        gau.res_scale.scale.copy_(torch.arange(1.0, 9.0))
    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gau(x), x * torch.arange(1.0, 9.0))


def test_pixel_shuffle_channel_order():
    head = RTMWHead(16, 3, (64, 64))
    c_out, hh, ww = 4, 2, 3
    x = torch.arange(4 * c_out, dtype=torch.float32).view(1, 4 * c_out, 1, 1).expand(1, 4 * c_out, hh, ww)
    y = head.ps(x)
    assert tuple(y.shape) == (1, c_out, 2 * hh, 2 * ww)
    for c in range(c_out):
        for i in range(2):
            for j in range(2):
                # input channel 4c + 2i + j lands in output channel c at offset (i, j) of every 2×2 cell
                assert torch.all(y[0, c, i::2, j::2] == 4 * c + 2 * i + j)


@pytest.mark.parametrize("bias, gate", [(1.5, 0.75), (-4.0, 0.0), (4.0, 1.0), (0.0, 0.5)])
def test_channel_attention_uses_hardsigmoid(bias, gate):
    att = ChannelAttention(2)
    with torch.no_grad():
        att.fc.weight.zero_()
        att.fc.bias.fill_(bias)
    x = torch.full((1, 2, 3, 3), 2.0)
    # relu6(b + 3) / 6, e.g. (1.5 + 3) / 6 = 0.75 where a sigmoid would give 0.818
    torch.testing.assert_close(att(x), x * gate, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------------------------- RTMDet, real weights
def letterbox(image: np.ndarray, size: int = 320) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    ratio = min(size / w, size / h)
    nw, nh = int(w * ratio + 0.5), int(h * ratio + 0.5)
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    mean = np.array([103.53, 116.28, 123.675], np.float32)
    std = np.array([57.375, 57.12, 58.395], np.float32)
    return ((canvas.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy(), ratio


def test_rtmdet_nano_with_real_weights_matches_onnx(shared_file):
    onnx_path = shared_file("models/rtmdet-nano_person_320_rawhead.onnx")
    image = cv2.imread(str(shared_file("images/000000197388.jpg")))
    model = create_model("rtmdet-nano-person")
    counts = load_folded_rtmdet(model, onnx_path)
    assert counts == {"named": 20, "folded": 113}
    x, _ = letterbox(image)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = session.run(None, {session.get_inputs()[0].name: x})
    cls_scores, bbox_preds = run(model, torch.from_numpy(x))
    assert len(ref) == 3
    for stride, r, cls, reg in zip((8, 16, 32), ref, cls_scores, bbox_preds):
        assert r.shape == (1, 320 // stride, 320 // stride, 5)
        logit_diff = np.abs(r[0, ..., 0] - cls[0, 0].numpy()).max()
        dist_diff = np.abs(r[0, ..., 1:].transpose(2, 0, 1) - reg[0].numpy()).max()
        assert logit_diff < 0.05, (stride, logit_diff)
        assert dist_diff < 0.1, (stride, dist_diff)
    # real weights see the five skiers: some logits well above 0 (sigmoid > 0.5)
    assert max(float(c.max()) for c in cls_scores) > 0.5


# --------------------------------------------------------------------------------------------- box decoding
@pytest.fixture(scope="module")
def geometry():
    if importlib.util.find_spec("rtmw_edge.geometry") is None:
        pytest.skip("rtmw_edge.geometry is not written yet")
    return importlib.import_module("rtmw_edge.geometry")


def test_grid_priors_by_hand(geometry):
    priors = np.asarray(geometry.grid_priors((64, 64), (8, 16, 32)))
    assert priors.shape == (64 + 16 + 4, 2)
    np.testing.assert_array_equal(priors[0], [0, 0])
    np.testing.assert_array_equal(priors[1], [8, 0])    # x = col·stride first, row-major
    np.testing.assert_array_equal(priors[8], [0, 8])
    np.testing.assert_array_equal(priors[9], [8, 8])
    np.testing.assert_array_equal(priors[63], [56, 56])
    np.testing.assert_array_equal(priors[64], [0, 0])   # stride 16 level starts
    np.testing.assert_array_equal(priors[65], [16, 0])
    np.testing.assert_array_equal(priors[80], [0, 0])   # stride 32 level
    np.testing.assert_array_equal(priors[83], [32, 32])
    rect = np.asarray(geometry.grid_priors((32, 64), (8, 16, 32)))  # (h, w): 4×8 + 2×4 + 1×2 cells
    assert rect.shape == (32 + 8 + 2, 2)
    np.testing.assert_array_equal(rect[7], [56, 0])
    np.testing.assert_array_equal(rect[8], [0, 8])


def test_distance2bbox_by_hand(geometry):
    boxes = np.asarray(geometry.distance2bbox(np.array([[8.0, 8.0], [0.0, 0.0]]),
                                              np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])))
    np.testing.assert_allclose(boxes, [[7, 6, 11, 12], [0, 0, 0, 0]])


def test_decode_rtmdet_by_hand(geometry):
    strides = (8, 16, 32)
    cls_scores = [np.full((1, 1, 64 // s, 64 // s), -10.0, np.float32) for s in strides]
    bbox_preds = [np.zeros((1, 4, 64 // s, 64 // s), np.float32) for s in strides]
    cls_scores[0][0, 0, 1, 1] = 0.0                    # prior 9: (8, 8) at stride 8
    bbox_preds[0][0, :, 1, 1] = [1.0, 2.0, 3.0, 4.0]
    cls_scores[2][0, 0, 1, 0] = 2.0                    # last level, row 1 col 0: prior 64 + 16 + 2 = (0, 32)
    bbox_preds[2][0, :, 1, 0] = [0.0, 8.0, 16.0, 4.0]
    boxes, scores = geometry.decode_rtmdet(cls_scores, bbox_preds, strides)
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    assert boxes.shape == (1, 84, 4) and scores.shape == (1, 84)
    np.testing.assert_allclose(boxes[0, 9], [7, 6, 11, 12], atol=1e-6)
    np.testing.assert_allclose(scores[0, 9], 0.5, atol=1e-7)
    np.testing.assert_allclose(boxes[0, 82], [0, 24, 16, 36], atol=1e-6)
    np.testing.assert_allclose(scores[0, 82], 1 / (1 + math.exp(-2.0)), rtol=1e-6)
    np.testing.assert_allclose(scores[0, 0], 1 / (1 + math.exp(10.0)), rtol=1e-5)
    assert int(np.argmax(scores[0])) == 82

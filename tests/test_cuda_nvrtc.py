"""The CUDA kernels compile through NVRTC (CPU only, no GPU) for Xavier, Orin and H100; cache and errors."""

from __future__ import annotations

import re
import sys

import pytest

from rtmw_edge.cuda import nvrtc as N
from rtmw_edge.cuda.kernels import SIGNATURES
from rtmw_edge.errors import MissingDependencyError

_AVAILABLE, _WHY = N.nvrtc_available()
needs_nvrtc = pytest.mark.skipif(not _AVAILABLE, reason=f"NVRTC wheel missing ({_WHY}); pip install -e '.[gpu]'")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path))
    return tmp_path


@needs_nvrtc
@pytest.mark.parametrize("arch", N.TARGET_ARCHS)
def test_every_kernel_compiles_to_cubin_and_ptx_for_the_target_archs(arch, home):
    assert N.nvrtc_version()[0] == 12, "CUDA 12 NVRTC is pinned (CUDA 13 cannot compile for sm_72)"
    assert int(arch[3:]) in N.supported_archs()
    for kind in ("cubin", "ptx"):
        for name, compiled in N.compile_all(arch, kind).items():
            assert compiled.kind == kind and not compiled.cached
            assert compiled.path.parent == home / "kernels" / compiled.arch
            assert compiled.path.read_bytes() == compiled.image
            if kind == "cubin":
                assert compiled.image[:4] == b"\x7fELF", name
            else:
                text = compiled.image.rstrip(b"\0").decode()
                assert f".target sm_{arch[3:]}" in text
                for kernel, (source, _) in SIGNATURES.items():
                    if source == name:
                        assert f".entry {kernel}(" in text, kernel
                # --fmad=false: no contracted multiply-adds, so float arithmetic is numpy's op for op (the
                # only fma left are expf's own, in the sigmoid of rtmdet_rawhead_decode)
                if name != "detector_post.cu":
                    assert "fma.rn" not in text, name
                else:
                    select = text[text.index(".entry detector_select("):]
                    select = select[: select.find(".entry", 10) if ".entry" in select[10:] else len(select)]
                    assert "fma.rn" not in select


@needs_nvrtc
def test_cache_hits_and_keys(home):
    first = N.compile_kernel("decode.cu", "sm_87")
    again = N.compile_kernel("decode.cu", "sm_87")
    assert again.cached and again.image == first.image and again.path == first.path
    other = N.compile_kernel("decode.cu", "sm_87", options=("-DUNUSED_FLAG=1",))
    assert other.path != first.path and not other.cached
    ptx = N.compile_kernel("decode.cu", "sm_87", kind="ptx")
    assert ptx.path.parent.name == "compute_87" and ptx.path.suffix == ".ptx"
    uncached = N.compile_kernel("decode.cu", "sm_87", use_cache=False)
    assert uncached.path is None and uncached.image == first.image
    key = N.cache_key("src", ("a",), (12, 9), "cubin")
    assert key != N.cache_key("src2", ("a",), (12, 9), "cubin") != N.cache_key("src", ("b",), (12, 9), "cubin")
    assert key != N.cache_key("src", ("a",), (12, 8), "cubin") != N.cache_key("src", ("a",), (12, 9), "ptx")


@needs_nvrtc
def test_compile_error_is_one_line_with_the_log():
    with pytest.raises(N.NvrtcError) as info:
        N.compile_source('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', "bad.cu", "cubin",
                         "sm_87")
    message = str(info.value)
    assert "\n" not in message and "bad.cu" in message and "sm_87" in message and "undefined_name" in message
    assert "undefined_name" in info.value.log


def test_target_choice_for_known_and_newer_devices():
    supported = [72, 75, 80, 86, 87, 89, 90, 100, 120]
    assert N.choose_target((8, 7), supported) == ("cubin", "sm_87")
    assert N.choose_target((7, 2), supported) == ("cubin", "sm_72")
    assert N.choose_target((12, 1), supported) == ("ptx", "compute_120")   # newer than NVRTC: PTX, JIT once
    assert N.choose_target((9, 1), supported) == ("ptx", "compute_90")
    with pytest.raises(N.RtmwEdgeError, match="cannot compile for compute capability 6.1"):
        N.choose_target((6, 1), supported)
    assert N.arch_option("cubin", "compute_87") == "--gpu-architecture=sm_87"
    assert N.arch_option("ptx", "sm_90") == "--gpu-architecture=compute_90"
    with pytest.raises(N.RtmwEdgeError):
        N.arch_option("cubin", "sm_xx")


_C_TYPES = {"int": "i", "float": "f", "double": "d"}


def _c_signatures(path) -> dict[str, list[tuple[str, str]]]:
    text = re.sub(r"//[^\n]*", "", path.read_text())
    out = {}
    for m in re.finditer(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\((.*?)\)\s*\{', text, re.S):
        params = []
        for p in m.group(2).split(","):
            p = " ".join(p.split())
            name = re.findall(r"\w+", p)[-1]
            params.append((name, "p" if "*" in p else _C_TYPES[p.split()[0]]))
        out[m.group(1)] = params
    return out


def test_python_signatures_match_the_cuda_sources():
    """Argument packing is checked without a GPU: names and types in kernels.SIGNATURES = the .cu parameters."""
    found = {}
    for name in N.KERNEL_FILES:
        for kernel, params in _c_signatures(N.KERNEL_DIR / name).items():
            found[kernel] = (name, tuple(params))
    assert found == SIGNATURES


def test_missing_cuda_python_names_the_gpu_extra(monkeypatch):
    for mod in ("cuda", "cuda.bindings", "cuda.bindings.nvrtc", "cuda.nvrtc"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(MissingDependencyError, match=r"rtmw-edge\[gpu\]"):
        N.nvrtc_version()
    ok, why = N.nvrtc_available()
    assert not ok and "gpu" in why


@needs_nvrtc
def test_compiling_leaves_python_s_shared_byte_objects_alone():
    """NVRTC writes into the buffers it is given: an empty log (size 1) written into `b" " * 1` once
    overwrote CPython's shared b" " with a NUL and broke unrelated code (URLs, HTTP headers)."""
    N.compile_source('extern "C" __global__ void ok(float* x) { x[0] = 1.0f; }', "ok.cu", "ptx", "sm_87")
    # decode() reads the object's data (b" "[0] would be folded to 32 at compile time)
    assert b" ".decode() == " " and bytes([32]).decode() == " " and repr(b" ") == "b' '"

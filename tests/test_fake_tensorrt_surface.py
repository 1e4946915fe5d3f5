"""The TensorRT stand-in is held to the real API: its surface equals the recorded surface of the real bindings
(tests/data/tensorrt_surface, recorded by scripts/record_trt_surface.py from the tensorrt-cu12-bindings wheels)
for each version, and it refuses names, enum values and arguments the version lacks."""

from __future__ import annotations

import enum
import inspect
import json

import pytest
from fake_tensorrt import (
    KNOBS,
    SURFACE_DIR,
    FakeSurfaceError,
    accepts,
    conform,
    make_fake_tensorrt,
    recorded_versions,
    surface_for,
)

RECORDED = recorded_versions()


def test_the_recorded_surfaces_are_the_three_versions_ci_covers():
    """10.3 (JetPack 6), the newest 10.x and the newest 11.x at recording time, each a full module dump."""
    assert len(RECORDED) == 3 and RECORDED[0] == "10.3.0"
    assert RECORDED[1].startswith("10.") and RECORDED[2].startswith("11.")
    for version in RECORDED:
        surface = json.loads((SURFACE_DIR / f"tensorrt-{version}.json").read_text())
        assert surface["version"] == version and "tensorrt-cu12-bindings" in surface["source"]
        names = surface["names"]
        assert len(names) > 150 and {"Builder", "OnnxParser", "Runtime", "BuilderFlag"} <= set(names)
        # facts of the real bindings that the old hand-written fake got wrong
        assert "Severity" not in names                                   # only ILogger.Severity exists
        assert names["BuilderFlag"]["members"].get("OBEY_PRECISION_CONSTRAINTS", 9) == 9
    assert surface_for("11.1.0")["names"]["NetworkDefinitionCreationFlag"]["members"]["STRONGLY_TYPED"] == 0
    assert surface_for("10.3.0.30")["names"]["NetworkDefinitionCreationFlag"]["members"]["STRONGLY_TYPED"] == 1


@pytest.mark.parametrize("version", RECORDED)
def test_the_fake_surface_matches_the_recorded_real_surface(version):
    trt = make_fake_tensorrt(version)
    real = trt.surface["names"]
    assert trt.surface["version"] == version
    public = [n for n in vars(trt) if not n.startswith("_") and n not in KNOBS]
    assert public, "the fake defines nothing"
    for name in public:
        value = getattr(trt, name)
        assert name in real, f"fake tensorrt.{name} is not in TensorRT {version}"
        if isinstance(value, type) and issubclass(value, enum.Enum):
            assert real[name]["kind"] == "enum"
            assert {k: int(m) for k, m in value.__members__.items()} == real[name]["members"], name
            assert len(value.__members__) == len(real[name]["members"])
            continue
        if isinstance(value, type):
            spec = real[name]
            assert spec["kind"] == "class"
            for member, attr in vars(value).items():
                if member.startswith("_") and member != "__init__":
                    continue
                known = {**spec["methods"], **spec["static"], **spec["properties"], **spec["values"],
                         **spec["classes"]}
                assert member in known, f"fake {name}.{member} is not in TensorRT {version}"
                if isinstance(attr, property) and attr.fset is not None:
                    assert spec["properties"][member], f"{name}.{member} is read-only in TensorRT {version}"
                if callable(attr) and member in spec["methods"] and spec["methods"][member]:
                    params = list(inspect.signature(inspect.unwrap(attr)).parameters.values())[1:]
                    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
                    # the real parameters, in order; the fake may leave out trailing ones that have defaults
                    assert any([q[0] for q in o[: len(names)]] == names and all(q[1] for q in o[len(names):])
                               for o in spec["methods"][member]), \
                        f"fake {name}.{member}{names} matches no overload of TensorRT {version}"
        else:
            assert real[name]["kind"] == "function"
    severity = real["ILogger"]["classes"]["Severity"]["members"]
    assert {m.name: int(m) for m in trt.ILogger.Severity} == severity
    assert int(trt.ILogger.ERROR) == severity["ERROR"]


def test_the_fake_refuses_names_that_10_3_lacks():
    old, new = make_fake_tensorrt("10.3.0"), make_fake_tensorrt(RECORDED[1])
    with pytest.raises(AttributeError):
        _ = old.Severity                                                # invented by the old fake
    with pytest.raises(AttributeError):
        _ = old.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS  # a later 10.x addition
    added = sorted(set(new.BuilderFlag.__members__) - set(old.BuilderFlag.__members__))
    assert added, "the newer 10.x records BuilderFlag members 10.3 does not have"
    for member in added:
        assert getattr(new.BuilderFlag, member) is not None
        with pytest.raises(AttributeError):
            getattr(old.BuilderFlag, member)
    with pytest.raises(AttributeError, match="has no attribute 'IPluginV3QuickCore'"):
        _ = old.IPluginV3QuickCore                                      # not in 10.3's bindings at all
    assert "IPluginV3QuickCore" in new.surface["names"]
    eleven = make_fake_tensorrt(RECORDED[2])
    with pytest.raises(AttributeError):
        _ = eleven.BuilderFlag.FP16                                     # removed in 11
    assert not hasattr(eleven.Builder, "platform_has_fast_fp16") and hasattr(old.Builder, "platform_has_fast_fp16")


@pytest.mark.parametrize("version", RECORDED)
def test_the_fake_refuses_arguments_the_real_signatures_do_not_take(version):
    trt = make_fake_tensorrt(version)
    logger = trt.Logger()
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, pool_size=1 << 20)     # the real keyword
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size=1 << 20)       # not a real keyword
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_timing_cache(config.create_timing_cache(b""), False, True)          # one argument too many
    with pytest.raises(TypeError, match="incompatible function arguments"):
        builder.create_network(0, 1)
    builder.create_network(flags=0)
    with pytest.raises(TypeError):
        trt.OnnxParser(builder.create_network(0))                                      # logger missing
    with pytest.raises(AttributeError, match="not a writable attribute"):
        trt.Runtime(logger).logger = logger                                             # read-only in TensorRT
    with pytest.raises(AttributeError):
        config.max_workspace_size = 1 << 20                                             # gone since 10.0


def test_a_fake_that_invents_a_name_is_refused():
    real = surface_for("10.3.0")["names"]["Builder"]

    class Builder:
        def create_network(self, flags=0):
            return flags

        def build_engine(self, network, config):  # removed in 10.0: the fake must not offer it
            return None

    with pytest.raises(FakeSurfaceError, match="Builder.build_engine"):
        conform(Builder, real, "Builder", "10.3.0")

    class Config:
        @property
        def num_optimization_profiles(self):
            return 0

        @num_optimization_profiles.setter
        def num_optimization_profiles(self, value):
            pass

    with pytest.raises(FakeSurfaceError, match="read-only"):
        conform(Config, surface_for("10.3.0")["names"]["IBuilderConfig"], "IBuilderConfig", "10.3.0")


def test_accepts_binds_like_pybind():
    overloads = [[["name", False, ""], ["shape", False, ""]]]
    assert accepts(overloads, 2, [])
    assert accepts(overloads, 1, ["shape"])
    assert not accepts(overloads, 1, [])
    assert not accepts(overloads, 2, ["name"])                 # given twice
    assert not accepts(overloads, 3, [])
    assert accepts([[["model", False, ""], ["path", True, ""]]], 1, [])
    assert accepts([[["args", False, "*"]]], 5, [])

#!/usr/bin/env python3
"""Record the real TensorRT Python API surface for the tests' stand-in (tests/fake_tensorrt.py).

    python scripts/record_trt_surface.py                       # 10.3.0, newest 10.x, newest 11.x
    python scripts/record_trt_surface.py --versions 10.3.0,10.x,11.x --out tests/data/tensorrt_surface

For each version the real bindings wheel (`tensorrt-cu12-bindings==V`, a pybind11 module) is downloaded with
pip, imported against no-op stub libraries and introspected — by the introspection of
`../shared/tools/trt_api_check` (its `resolve_versions` / `ensure_api`, cached in ~/.cache/trt_api_check). The
dump is reduced to what a stand-in must agree with and written as `tensorrt-<version>.json`:

    names: { NAME: {"kind": "enum", "members": {MEMBER: value}, "deprecated": [MEMBER, ...]}
                 | {"kind": "class", "bases": [...], "methods": {NAME: [overload, ...]},
                    "static": {NAME: [overload, ...]}, "properties": {NAME: writable}, "values": {NAME: int|None},
                    "classes": {NAME: <nested enum/class>}, "deprecated": [MEMBER, ...]}
                 | {"kind": "function", "overloads": [overload, ...]} | {"kind": "module"} | {"kind": "value"} }
    overload: [[parameter name, has a default, "" | "*" | "**"], ...] without `self`

CI never runs this (it needs the network): the JSON files are committed and the tests read them. Run it again
when a new TensorRT release should be covered, and commit the result.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOOL = ROOT.parent / "shared" / "tools" / "trt_api_check" / "check_trt_api.py"
DEFAULT_OUT = ROOT / "tests" / "data" / "tensorrt_surface"
SURFACE_FORMAT = 1


def load_checker(path: Path):
    spec = importlib.util.spec_from_file_location("trt_api_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["trt_api_check"] = module
    spec.loader.exec_module(module)
    return module


def _overloads(sigs: list[dict]) -> list[list]:
    out = []
    for sig in sigs:
        params = [p for p in sig.get("params", []) if "marker" not in p]
        if params and params[0].get("name") == "self":
            params = params[1:]
        out.append([[p["name"], bool(p.get("default")), p.get("star", "")] for p in params])
    return out


def reduce_class(desc: dict, deprecated) -> dict:
    if desc.get("kind") == "enum":
        members = desc.get("enum") or {}
        return {"kind": "enum", "members": {k: v["value"] for k, v in members.items()},
                "deprecated": sorted(k for k, v in members.items() if deprecated(v.get("doc", "")))}
    out = {"kind": "class", "bases": desc.get("bases", []), "methods": {}, "static": {}, "properties": {},
           "values": {}, "classes": {}, "deprecated": []}
    for name, member in sorted((desc.get("members") or {}).items()):
        kind = member.get("kind")
        if kind == "method":
            out["methods"][name] = [] if member.get("no_init") else _overloads(member.get("sigs", []))
        elif kind == "static":
            out["static"][name] = _overloads(member.get("sigs", []))
        elif kind == "property":
            out["properties"][name] = bool(member.get("writable"))
        elif kind == "class":
            out["classes"][name] = reduce_class(member.get("nested") or {}, deprecated)
        elif kind == "value":
            out["values"][name] = member.get("value")
        if deprecated(member.get("doc", "")):
            out["deprecated"].append(name)
    return out


def reduce_api(api: dict, checker) -> dict:
    names = {}
    for name, desc in sorted(api["names"].items()):
        kind = desc.get("kind")
        if kind in ("class", "enum"):
            names[name] = reduce_class(desc, checker.member_deprecated)
        elif kind == "function":
            names[name] = {"kind": "function", "overloads": _overloads(desc.get("sigs", []))}
        else:
            names[name] = {"kind": kind}
    return {"format": SURFACE_FORMAT, "version": api["version"],
            "source": f"{checker.BINDINGS_DIST}=={api['version']} (tensorrt_bindings/tensorrt.so), imported against "
                      "no-op stub libraries and introspected (scripts/record_trt_surface.py)",
            "names": names}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default="10.3.0,10.x,11.x", help="comma list; N.x = newest N.* release")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tool", type=Path, default=DEFAULT_TOOL, help="trt_api_check's check_trt_api.py")
    args = ap.parse_args(argv)
    if not args.tool.is_file():
        print(f"error: {args.tool} not found (pass --tool)", file=sys.stderr)
        return 1
    checker = load_checker(args.tool)
    checker.CACHE.mkdir(parents=True, exist_ok=True)
    versions = checker.resolve_versions(args.versions)
    args.out.mkdir(parents=True, exist_ok=True)
    for version in versions:
        surface = reduce_api(checker.ensure_api(version), checker)
        path = args.out / f"tensorrt-{version}.json"
        path.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n")
        print(f"{path}: {len(surface['names'])} names", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`rtmw-edge selftest`: is the TensorRT path sound on this machine? Export small project graphs (seeded random
weights), build their engines here and compare each with ONNX Runtime through `check`.

It sits above both `backends.tensorrt` (the builder) and `check` (the comparison), so neither imports the
other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import export
from .backends.tensorrt import build_engine, import_tensorrt
from .engines import TIMING_CACHE_NAME
from .errors import RtmwEdgeError, require


def _synthetic_images(folder: Path, count: int = 3) -> Path:
    """A few deterministic 640×480 pictures (gradients, shapes) for the engine-vs-ONNX comparison."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        yy, xx = np.mgrid[0:480, 0:640]
        image = np.stack([(xx * 255 // 640), (yy * 255 // 480), ((xx + yy + 80 * i) % 256)], -1).astype(np.uint8)
        for _ in range(6):
            x, y = int(rng.integers(0, 560)), int(rng.integers(0, 400))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.rectangle(image, (x, y), (x + int(rng.integers(20, 80)), y + int(rng.integers(40, 120))), color, -1)
            cv2.circle(image, (int(rng.integers(0, 640)), int(rng.integers(0, 480))), int(rng.integers(8, 40)),
                       color, -1)
        cv2.imwrite(str(folder / f"selftest_{i}.png"), image)
    return folder


SELFTEST_MODELS = ("rtmpose-t-256x192", "rtmdet-nano-person")


def selftest(workdir: str | Path, *, images: str | Path | None = None, models=SELFTEST_MODELS,
             console=None, progress: bool = True) -> list[dict]:
    """Export small project graphs (seeded random weights), build their engines here and compare each with
    ONNX Runtime through `check`. Returns one row per model; `row['passed']` says whether it matched.

    Random weights give near-flat SimCC logits whose argmax is not stable under TF32 rounding, so the pose
    comparison gates on the raw outputs (max relative difference) rather than keypoint positions."""
    from rich.console import Console

    from .check import Tolerances, check_model

    console = console or Console(stderr=True)
    trt = import_tensorrt()  # fail fast, before the slow exports
    require("torch", "export")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    image_dir = Path(images) if images is not None else _synthetic_images(workdir / "images")
    console.print(f"selftest: TensorRT {trt.__version__}, work folder {workdir}", highlight=False, markup=False)
    rows = []
    for name in models:
        row = {"model": name, "passed": False}
        rows.append(row)
        try:
            onnx_path = export.export_onnx(name, workdir / f"{name}.onnx", random_init=True, progress=False)
            result = build_engine(onnx_path, workdir / f"{name}.engine", timing_cache=workdir / TIMING_CACHE_NAME,
                                  console=console, progress=progress, force=True)
            row.update(build_path=result.plan.path.name, precision=result.plan.path.precision,
                       build_seconds=round(result.seconds, 1), engine_bytes=(result.manifest or {}).get("engine_bytes"))
            report = check_model(result.engine_path, onnx_path, image_dir,
                                 tolerances=Tolerances(max_rel=1e-2, max_px_p95=1e9, min_oks=0.0, min_recall=0.9))
            row["max_rel"] = max((o["max_rel"] for o in report.outputs.values()), default=0.0)
            row["failures"] = report.failures
            row["passed"] = report.passed
        except RtmwEdgeError as exc:
            row["failures"] = [str(exc)]
    return rows

"""Heavy libraries stay out of the paths that do not need them (torch for ONNX Runtime runs, etc.).

(The `cuda` namespace itself may be imported at start-up by the cuda-bindings .pth hook; its runtime and
NVRTC modules must not be.)"""

from __future__ import annotations

import subprocess
import sys

from conftest import SHARED

CODE = f"""
import sys, cv2
import rtmw_edge.models, rtmw_edge.cli
from rtmw_edge.pipeline import PoseEstimator
est = PoseEstimator(r"{SHARED / 'models' / 'rtmdet-nano_person_320_rawhead.onnx'}", sys.argv[1])
est(cv2.imread(r"{SHARED / 'images' / '000000000785.jpg'}"))
heavy = ("torch", "tensorrt", "cuda.bindings.runtime", "cuda.bindings.nvrtc", "matplotlib", "aiohttp", "pycocotools")
print(sorted(m for m in heavy if m in sys.modules))
"""


def test_onnxruntime_pipeline_imports_no_heavy_library(tmp_path):
    from rtmw_edge.export import export_onnx

    pose = export_onnx("rtmpose-t-256x192", tmp_path / "pose.onnx", random_init=True, progress=False)
    out = subprocess.run([sys.executable, "-c", CODE, str(pose)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout

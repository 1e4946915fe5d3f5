"""A project detector behind a non-ONNX-Runtime engine (what a TensorRT engine is) keeps the detector contract."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import SHARED

from rtmw_edge.backends.onnxruntime import OrtEngine
from rtmw_edge.detectors import EngineDetector, OnnxDetector, UnknownDetectorError
from rtmw_edge.export import export_onnx
from rtmw_edge.models import create_model


class HostEngine:
    """Only the host Engine protocol (path, metadata, names, run): no ONNX session is visible."""

    def __init__(self, path):
        self._ort = OrtEngine(path)
        self.path, self.metadata = self._ort.path, self._ort.metadata
        self.input_name, self.output_names = self._ort.input_name, self._ort.output_names
        self.input_dims, self.max_batch = self._ort.input_dims, self._ort.max_batch

    def run(self, x):
        return self._ort.run(x)


def test_engine_detector_equals_the_onnx_detector(tmp_path):
    from onnx_weights import load_folded_rtmdet

    model = create_model("rtmdet-nano-person")
    load_folded_rtmdet(model, SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx")
    path = export_onnx("rtmdet-nano-person", tmp_path / "det.onnx", model=model, progress=False)
    image = cv2.imread(str(SHARED / "images" / "000000197388.jpg"))
    a_boxes, a_scores = OnnxDetector(path)(image)
    b_boxes, b_scores = EngineDetector(HostEngine(path))(image)
    assert len(a_boxes) == 5
    np.testing.assert_array_equal(a_boxes, b_boxes)
    np.testing.assert_array_equal(a_scores, b_scores)


def test_engine_detector_refuses_a_pose_engine(tmp_path):
    path = export_onnx("rtmpose-t-256x192", tmp_path / "pose.onnx", random_init=True, progress=False)
    with pytest.raises(UnknownDetectorError, match="not a detector"):
        EngineDetector(HostEngine(path))

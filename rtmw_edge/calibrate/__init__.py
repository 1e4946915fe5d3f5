"""INT8 for TensorRT 10.3 and 11: calibration data, explicit Q/DQ quantisation, sensitivity, fidelity report.

- `data`: the calibration-data pipeline (run-time preprocessing, seeded stratified sampling, sharded cache
  with a manifest: reuse, invalidation, resume);
- `ranges`: streaming activation statistics and the clip methods (max, percentile, entropy, mse);
- `quantize`: layers and MACs, TensorRT-style Q/DQ placement, the rewrite, bias correction, `validate_qdq`;
- `sensitivity`: the switchable graph, per-layer sensitivity, the frontier behind `--auto-exclude`;
- `fidelity` / `report`: INT8 vs FP32 measures and the Markdown + JSON report on held-out images;
- `runner.calibrate`: everything in order (what `rtmw-edge calibrate` calls). See docs/int8.md.
"""

from .runner import CalibrateOptions, CalibrateResult, calibrate

__all__ = ["CalibrateOptions", "CalibrateResult", "calibrate"]

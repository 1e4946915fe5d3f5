"""ONNX Runtime engine, tuned for the CPU pipeline (and CUDA/TensorRT providers when present)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import RtmwEdgeError
from ..onnx_meta import read_metadata


def session_options(threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # full graph optimisation (constant folding, Conv+activation fusion, layout transforms)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # one frame's work is a chain of ops: parallelism inside ops pays, across ops it does not
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: no optimizer chatter on the console
    # no busy-waiting after a run: the detector's and the pose model's thread pools (and the Python code
    # between the calls) take turns on the same cores, and a spinning pool steals them from the next one
    # (measured by scripts/bench_cpu.py: detector + pose on 2 cores, 84 → 54 ms/frame)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OrtEngine:
    """`run(x)` → dict of outputs. `io_binding=True` binds the input buffer in place instead of copying it
    into the session (the win is on CUDA providers; on CPU the difference is measured by
    scripts/bench_pipeline.py, which is why it is off by default)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: list[str] | None = None,
                 io_binding: bool = False) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads),
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RtmwEdgeError(f"ONNX Runtime cannot load {self.path.name}: {first[:200]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dims = tuple(d if isinstance(d, int) else None for d in inp.shape)
        self.max_batch = self.input_dims[0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.io_binding = io_binding

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.io_binding:
            return dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))

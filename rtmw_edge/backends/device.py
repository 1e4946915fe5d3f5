"""The GPU engine interface: inference on device buffers, enqueued on a CUDA stream.

Two implementations: TensorRT (`backends/tensorrt.py`: `set_input_shape`, `set_tensor_address`,
`execute_async_v3`) and PyTorch-CUDA (`backends/torch_cuda.py`: the exported graph or the PyTorch model on
the GPU, so the whole GPU runtime runs and is measured on machines without TensorRT). Pointers are plain
integers (CUdeviceptr values) and the stream a plain integer handle (cudaStream_t / CUstream), so buffers
and streams from cuda-python, CuPy, PyTorch or pycuda can be handed in without copies.
"""

from __future__ import annotations

from typing import Protocol


class DeviceEngine(Protocol):
    name: str
    input_name: str
    output_names: list[str]
    min_batch: int
    max_batch: int
    metadata: dict | None                 # the project metadata of the ONNX the engine was built from

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of the input tensor for `batch` items (float32, NCHW)."""
        ...

    def output_shape(self, name: str, batch: int) -> tuple[int, ...]:
        """Shape of output `name` for `batch` items."""
        ...

    def output_dtype(self, name: str) -> str:
        """numpy dtype name of output `name` ("float32", "int64", ...)."""
        ...

    def infer_async(self, inputs: dict[str, int], outputs: dict[str, int], stream: int, batch: int) -> None:
        """Enqueue one inference of `batch` items reading the device buffers in `inputs` and writing the
        device buffers in `outputs` (name → pointer), on `stream`. Returns without synchronising."""
        ...

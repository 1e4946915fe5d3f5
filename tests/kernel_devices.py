"""Where the kernel tests launch the project's CUDA kernels: the host shim (`rtmw_edge.cuda.host`: the unchanged
`.cu` sources compiled with g++, every CI run) or a CUDA GPU (`-m gpu`). Both take the same calls — put/empty/get
numpy arrays, launch a kernel with the Launch and the arguments `cuda/kernels.py` packs — so one test body checks
a kernel against its numpy twin on either."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from rtmw_edge.cuda import kernels as KK


class HostDevice:
    """'Device' memory is numpy memory (pointers are host addresses); kernels run on the host shim."""

    kind = "host"

    def __init__(self, order: str = "ascending", seed: int = 0) -> None:
        from rtmw_edge.cuda.host import HostKernels

        self.kernels = HostKernels(order=order, seed=seed)
        self.buffers: list[np.ndarray] = []

    def put(self, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array).copy()
        self.buffers.append(array)
        return array.ctypes.data

    def empty(self, nbytes: int, fill: int = 0xFF) -> int:
        buf = np.full(max(int(nbytes), 1), fill, np.uint8)   # garbage, as cudaMalloc gives
        self.buffers.append(buf)
        return buf.ctypes.data

    def get(self, ptr: int, shape, dtype=np.float32) -> np.ndarray:
        out = np.empty(shape, dtype)
        ctypes.memmove(out.ctypes.data, int(ptr), out.nbytes)
        return out

    def launch(self, kernel: str, launch, **args) -> None:
        self.kernels.launch(kernel, launch, KK.pack_args(kernel, **args))

    def close(self) -> None:
        self.buffers.clear()


def gpu_or_skip() -> None:
    """Skip the calling test where no CUDA device (or no cuda-python) is there."""
    from rtmw_edge.cuda import runtime as R

    try:
        ok, why = R.device_available(0)
    except Exception as exc:  # cuda-python missing
        ok, why = False, str(exc)
    if not ok:
        pytest.skip(f"no CUDA device: {why}")


class CudaDevice:
    """Kernels + one stream on a CUDA GPU (skipped without one)."""

    kind = "cuda"

    def __init__(self) -> None:
        from rtmw_edge.cuda import runtime as R

        gpu_or_skip()
        self.R = R
        self.device = R.get_device(0)
        self.kernels = R.KernelModules(self.device)
        self.stream = R.Stream()
        self.buffers: list = []

    def put(self, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        buf = self.R.DeviceBuffer(array.nbytes)
        self.buffers.append(buf)
        self.R.copy_htod_async(buf.ptr, array.ctypes.data, array.nbytes, self.stream.handle)
        self.stream.synchronize()
        return buf.ptr

    def empty(self, nbytes: int, fill: int = 0xFF) -> int:
        buf = self.R.DeviceBuffer(nbytes)
        self.buffers.append(buf)
        self.R.memset_async(buf.ptr, fill, nbytes, self.stream.handle)
        return buf.ptr

    def get(self, ptr: int, shape, dtype=np.float32) -> np.ndarray:
        out = np.empty(shape, dtype)
        self.R.copy_dtoh_async(out.ctypes.data, ptr, out.nbytes, self.stream.handle)
        self.stream.synchronize()
        return out

    def launch(self, kernel: str, launch, **args) -> None:
        self.kernels.launch(kernel, launch, KK.pack_args(kernel, **args), self.stream)

    def close(self) -> None:
        for buf in self.buffers:
            buf.free()
        self.buffers.clear()


DEVICES = ["host", pytest.param("cuda", marks=pytest.mark.gpu)]


def open_device(kind: str, order: str = "ascending"):
    return HostDevice(order) if kind == "host" else CudaDevice()


def pipelines_agree(pairs, input_px: float = 2.0) -> dict:
    """GPU vs CPU pipeline results, person by person ((cpu Person, gpu Person) pairs), under the rule of
    docs/gpu-validation.md for models with random weights, in units of tol = 0.25 detector-input pixels (at least
    0.5 image px; `input_px`: image pixels per detector-input pixel, 2 for the 640-wide shared photos): boxes within
    tol (the two letterboxes differ by ±1 gray level: measured ≤ 0.39 image px on the shared photos);
    keypoints: the median displacement over all keypoints ≤ tol, and over persons the 95th percentile of each
    person's median ≤ tol. Not a share of keypoints: flat random SimCC
    logits flip the argmax of ~9 % of RTMW keypoints under ±1-gray crops (the CPU twins flip the same way), and a
    flipped keypoint lands anywhere on its axis — a median is blind to them, a real bug (x/y swapped, a wrong
    scale or offset) moves most keypoints of a person. Returns the measured numbers."""
    displacements, person_medians, box = [], [], 0.0
    for cpu, gpu in pairs:
        box = max(box, float(np.abs(cpu.bbox - gpu.bbox).max()))
        valid = (cpu.keypoint_scores > 0) & (gpu.keypoint_scores > 0)
        moved = np.linalg.norm(cpu.keypoints[valid] - gpu.keypoints[valid], axis=1)
        if len(moved):
            displacements.extend(moved.tolist())
            person_medians.append(float(np.median(moved)))
    d = np.asarray(displacements)
    tol = 0.25 * max(float(input_px), 2.0)
    out = {"tolerance_px": tol, "persons": len(person_medians), "keypoints": len(d), "max_box_px": box,
           "median_px": float(np.median(d)), "person_median_p95_px": float(np.percentile(person_medians, 95)),
           "within_0.5px": float((d <= 0.5).mean()), "p99_px": float(np.percentile(d, 99)), "max_px": float(d.max())}
    assert box <= tol, out
    assert out["median_px"] <= tol and out["person_median_p95_px"] <= tol, out
    return out


def real_detector_export(folder, rawhead):
    """The shared RTMDet-nano raw head's official weights as a project export (what the PyTorch device engine
    runs: it refuses foreign files), and the model: (path, model)."""
    from onnx_weights import load_folded_rtmdet

    from rtmw_edge.export import export_onnx
    from rtmw_edge.models import create_model

    det = create_model("rtmdet-nano-person")
    load_folded_rtmdet(det, rawhead)
    return export_onnx("rtmdet-nano-person", folder / "rtmdet-nano-real.onnx", model=det, progress=False), det

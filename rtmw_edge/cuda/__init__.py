"""The GPU runtime: CUDA-stream pipeline, NVRTC-compiled kernels, cuda-python buffers/streams/events.

`runtime` (cuda-python wrappers and interop), `nvrtc` (kernel compilation and cache), `kernels` (launch and
buffer logic, pure Python), `pipeline` (`GpuPoseEstimator`). Nothing here imports cuda-python at import
time; see docs/gpu-runtime.md.
"""

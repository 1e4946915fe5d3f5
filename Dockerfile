# syntax=docker/dockerfile:1
#
# rtmw-edge workstation image (x86_64 + NVIDIA GPU): export ONNX, INT8 calibration, TensorRT engine builds
# and benchmarks. The Jetson serving image is Dockerfile.jetson; the guide is docs/docker.md.
#
#   docker build -t rtmw-edge:desktop .
#   docker run --rm --gpus all -v "$PWD":/workspace rtmw-edge:desktop export rtmw-l-256x192 --precision fp16 \
#       -o models/rtmw-l-256x192.onnx
#   docker run --rm --gpus all -v "$PWD":/workspace rtmw-edge:desktop bench ...
#
# Base: NGC TensorRT 24.08 = TensorRT 10.3 (the version JetPack 6 ships, so calibration caches and
# precision behaviour match the Jetson), CUDA 12.6, Ubuntu 22.04, Python 3.10; it needs a driver >= 560
# (or a data-center driver with forward compatibility). Newer GPUs (Blackwell) need a newer TensorRT:
# --build-arg TRT_IMAGE=nvcr.io/nvidia/tensorrt:<release>-py3 (see the NGC TensorRT release notes).
ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:24.08-py3

FROM ${TRT_IMAGE}
ARG TRT_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="rtmw-edge (workstation)" \
      org.opencontainers.image.description="Whole-body pose (RTMW) toolkit on NVIDIA TensorRT: ONNX export, INT8 calibration, engine builds, benchmarks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/docker.md" \
      org.opencontainers.image.base.name="${TRT_IMAGE}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# PyTorch for `export` and the PyTorch-CUDA comparison in `bench`: the version the CI tests; from PyPI by
# default (the CUDA build), or from another index, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# for a smaller CPU-only image (export still works; bench then has no PyTorch-CUDA backend).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ARG RTMW_UID=1000

# The package from the build context (bind-mounted read-write for the build's scratch files, which are
# discarded: no sources in the layers). Extras: export (PyTorch, onnxslim), gpu (cuda-python, NVRTC),
# serve and viz. TensorRT is the image's own (10.3), never the PyPI `trt` extra (it would pull 11.x).
# numpy < 2: TensorRT 10.3's bindings predate NumPy 2 (cuda-python stays < 13 through the gpu extra).
RUN --mount=type=bind,target=/src,rw \
    printf '%s\n' 'numpy<2' > /tmp/constraints.txt \
 && if [ -n "${TORCH_INDEX_URL}" ]; then \
      python3 -m pip install --no-cache-dir --constraint /tmp/constraints.txt --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    else \
      python3 -m pip install --no-cache-dir --constraint /tmp/constraints.txt "torch==${TORCH_VERSION}"; \
    fi \
 && python3 -m pip install --no-cache-dir --constraint /tmp/constraints.txt "/src[export,gpu,serve,viz]" \
 && rm /tmp/constraints.txt \
 && python3 -c "import tensorrt, torch, rtmw_edge; print('tensorrt', tensorrt.__version__, 'torch', torch.__version__, 'rtmw-edge', rtmw_edge.__version__)" \
 && rtmw-edge --help > /dev/null

# A non-root user (uid 1000 by default: files written to the mounted workspace belong to the usual
# desktop user; --build-arg RTMW_UID=$(id -u) to match yours). The base may already have a user with that
# uid, hence --non-unique.
RUN groupadd --non-unique --gid "${RTMW_UID}" rtmw \
 && useradd --non-unique --uid "${RTMW_UID}" --gid rtmw --create-home --shell /bin/bash rtmw \
 && mkdir -p /workspace \
 && chown rtmw:rtmw /workspace

# Downloads (checkpoints), ONNX exports of registered names and the NVRTC kernel cache go to the
# mounted workspace, so they survive the container.
ENV RTMW_EDGE_HOME=/workspace/.cache/rtmw-edge \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /workspace
# numeric, so the host can tell it is not root
USER ${RTMW_UID}

# A tool image, not a service: no health check (the daemon's HEALTHCHECK is in Dockerfile.jetson).
HEALTHCHECK NONE
ENTRYPOINT ["rtmw-edge"]
CMD ["--help"]

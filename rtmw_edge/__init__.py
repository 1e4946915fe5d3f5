"""rtmw-edge: real-time whole-body pose estimation (RTMW / RTMW3D / RTMPose) on NVIDIA edge devices."""

__version__ = "0.1.0"

"""DepthFusion generator: text → RGBD frames served over ZeroMQ."""

__version__ = "0.1.0"

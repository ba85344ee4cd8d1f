"""DepthFusion's TouchDesigner-side library: wire protocol, receiver, schema and math.

Depends on numpy and pyzmq only, so it runs inside TouchDesigner's Python 3.11.
"""

from .protocol import PROTOCOL_VERSION, Frame, ProtocolError

__version__ = "0.1.0"  # the package version (pyproject.toml reads it); td_bridge.stamp puts it in the .tox

__all__ = ["PROTOCOL_VERSION", "Frame", "ProtocolError", "__version__"]

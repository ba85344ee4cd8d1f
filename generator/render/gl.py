"""The OpenGL context, headless: EGL on Linux (a GPU's driver where present, Mesa's llvmpipe otherwise), the
system's own standalone context elsewhere (WGL on Windows, CGL on macOS, which stops at OpenGL 4.1)."""

from __future__ import annotations

import sys
from typing import Any

INSTALL_HINT = ("Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri (Fedora: mesa-libEGL "
                "mesa-dri-drivers); `python3 dev.py test` installs them as root")
OTHER_HINT = "update the graphics driver: the renderer needs OpenGL 4.1 or newer"


class GLUnavailable(OSError):
    """No OpenGL context could be made (a system library or driver is missing); the message says what to install."""


def create_context() -> Any:
    """A standalone OpenGL core context (4.5 through EGL on Linux, 4.1+ elsewhere); GLUnavailable otherwise."""
    try:
        import moderngl
    except ImportError as exc:
        raise GLUnavailable(f"moderngl is not installed ({exc}); pip install 'moderngl>=5.8'") from None
    linux = sys.platform.startswith("linux")
    try:
        if linux:
            return moderngl.create_standalone_context(backend="egl", require=450)
        return moderngl.create_standalone_context(require=410)
    except Exception as exc:  # moderngl raises plain Exceptions for a missing libEGL or driver
        raise GLUnavailable(f"no OpenGL context{' through EGL' if linux else ''} ({exc}); "
                            f"{INSTALL_HINT if linux else OTHER_HINT}") from None


def glsl_version(ctx: Any) -> str:
    """The #version line for the context: 450 core where OpenGL 4.5 is there, else 410 core (macOS)."""
    return "#version 450 core\n" if ctx.version_code >= 450 else "#version 410 core\n"


def renderer_name(ctx: Any) -> str:
    """What draws, e.g. 'llvmpipe (LLVM 15.0.6, 256 bits)' or a GPU's name."""
    return str(ctx.info.get("GL_RENDERER", "unknown"))

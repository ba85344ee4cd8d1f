"""The OpenGL context: moderngl over EGL, headless (a GPU's driver where present, Mesa's llvmpipe otherwise)."""

from __future__ import annotations

from typing import Any

INSTALL_HINT = ("Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri (Fedora: mesa-libEGL "
                "mesa-dri-drivers); `python3 dev.py test` installs them as root")


class GLUnavailable(RuntimeError):
    """No OpenGL 4.5 context could be made; the message says what to install."""


def create_context() -> Any:
    """A standalone OpenGL 4.5 core context through EGL; GLUnavailable with an install hint otherwise."""
    try:
        import moderngl
    except ImportError as exc:
        raise GLUnavailable(f"moderngl is not installed ({exc}); pip install 'moderngl>=5.8'") from None
    try:
        ctx = moderngl.create_standalone_context(backend="egl", require=450)
    except Exception as exc:  # moderngl raises plain Exceptions for a missing libEGL or driver
        raise GLUnavailable(f"no OpenGL 4.5 context through EGL ({exc}); {INSTALL_HINT}") from None
    return ctx


def renderer_name(ctx: Any) -> str:
    """What draws, e.g. 'llvmpipe (LLVM 15.0.6, 256 bits)' or a GPU's name."""
    return str(ctx.info.get("GL_RENDERER", "unknown"))

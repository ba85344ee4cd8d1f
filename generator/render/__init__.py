"""Rendering frames without TouchDesigner: moderngl over EGL, drawing the component's own GLSL.

``Renderer(rgb, depth, display, edges).render(view, view_params)`` gives an image of a view (VIEWS);
``generator.render.video`` moves the camera along a path and writes a video (``spherical`` adds the stereo
metadata), ``cli`` is ``python -m generator render``, ``service`` the server's ``render`` command.
"""

from .gl import GLUnavailable
from .views import VIEWS, Renderer

__all__ = ["GLUnavailable", "Renderer", "VIEWS"]

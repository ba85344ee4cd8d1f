"""Rendering frames without TouchDesigner: moderngl over EGL, drawing the component's own GLSL.

``Renderer(rgb, depth, display, edges).render(view, view_params)`` gives an image of a view (VIEWS);
``generator.render.video`` moves the camera along a path and writes a video.
"""

from .gl import GLUnavailable
from .views import STEREO_360, VIEWS, Renderer

__all__ = ["GLUnavailable", "Renderer", "STEREO_360", "VIEWS"]

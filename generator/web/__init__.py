"""The web viewer: a page and one WebSocket that show the newest frame on the displaced sphere (docs/web.md).

A second receiver of the generator, like TouchDesigner: it reads frames newest-wins from the frames publisher and
sends validated commands to the command socket. ``shaders`` turns the component's GLSL into GLSL ES 3.0,
``messages`` checks what the browser sends and packs frames for it, ``server`` serves both.
"""

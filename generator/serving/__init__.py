"""The serving side of the generator (``python -m generator serve``): one command path, one queue, one publisher.

- ``server``: GeneratorServer. Commands on a ZeroMQ ROUTER (OSC's arrive there too), frames and events on an
  XPUB, one worker thread per device, each running its own copy of the backend.
- ``jobs``: the job queue between the command loop and the workers (Job, JobQueue, QueueFull, QueueClosed).
- ``workers``: Worker (one device's), serve's ``--device`` lists, what a failure means for a device.
- ``publisher``: FramePublisher, publishing that never loses the newest frame.
- ``osc``: OscBridge, show control over UDP turned into the same requests a ZeroMQ client sends.
- ``osc_space``: the OSC address space and its type tags (``python -m generator osc-doc`` prints docs/osc.md).
- ``osc_packet``: structural checks of a datagram before python-osc parses it.
- ``ratelimit``: logging and per-sender limits a hostile peer cannot flood.
- ``estimate_jobs``: the ``estimate`` command (uploaded image → depth model → frame) and ``serve --depth-check``.
- ``upscale_jobs``: the ``upscale`` command and ``generate`` with ``upscale`` true.

What serving shares with the one-shot CLI verbs stays in ``generator``: frames, library, cues, upscaling (one
upscaled frame), backends, estimators and render (whose ``service`` is the server's ``render`` command). This
package imports none of its modules itself.
"""

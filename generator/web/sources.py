"""Where the web viewer's frames come from: a running generator (frames publisher + command socket, as
TouchDesigner reads them), one saved frame or an exported mesh (``python -m generator view``)."""

from __future__ import annotations

import time
from typing import Any, Protocol

from td_bridge.protocol import Frame
from td_bridge.receiver import CommandClient, CommandError, FrameReceiver

from .messages import PackedFrame, pack_frame

COMMAND_TIMEOUT_S = 10.0


class FrameSource(Protocol):
    commands: bool  # whether requests reach a generator
    model: bytes | None  # a mesh to show instead of frames (meshes.pack_model)

    def wait_frame(self, timeout: float) -> PackedFrame | None: ...

    def event(self, kind: str) -> dict[str, Any] | None: ...

    def request(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class GeneratorLink:
    """A running generator's newest frame (a FrameReceiver that drains its subscription and keeps only the newest,
    packed for the page on the receiving thread) and its command socket. ``request`` blocks: call it off the event
    loop."""

    commands = True
    model = None

    def __init__(self, frames: str, commands: str) -> None:
        self.receiver = FrameReceiver(frames, prepare=pack_frame)
        self.client = CommandClient(commands, timeout=COMMAND_TIMEOUT_S)

    def wait_frame(self, timeout: float) -> PackedFrame | None:
        return self.receiver.wait(timeout)

    def event(self, kind: str) -> dict[str, Any] | None:
        return self.receiver.event(kind)

    def request(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        return self.client.request(cmd, args)[0]

    def close(self) -> None:
        self.receiver.close()
        self.client.close()


class SavedFrame:
    """One frame read from disk; there is no generator to command."""

    commands = False
    model: bytes | None = None

    def __init__(self, frame: Frame) -> None:
        self.packed: PackedFrame | None = pack_frame(frame)

    def wait_frame(self, timeout: float) -> PackedFrame | None:
        packed, self.packed = self.packed, None
        if packed is None:
            time.sleep(timeout)
        return packed

    def event(self, kind: str) -> dict[str, Any] | None:
        return None

    def request(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        raise CommandError("unavailable", "this page shows a saved frame (view); `serve --web` generates")

    def close(self) -> None:
        pass


class SavedMesh(SavedFrame):
    """An exported mesh (meshes.pack_model), shown as it is: no frames, no generator."""

    def __init__(self, model: bytes) -> None:
        self.packed = None
        self.model = model

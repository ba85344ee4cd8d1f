"""DepthFusion's TouchDesigner extension: a thin shim over td_bridge.component.ComponentController.

The builder (build_depthfusion.py) puts this file into the component's ``DepthFusionExt`` Text
DAT and promotes it, so ``Connect()``, ``Generate()`` … are methods of the component. Everything
worth testing lives in td_bridge (tests/test_component.py); this file moves values between the
component's parameters and operators and the controller, on TouchDesigner's main thread:
the Execute DAT calls ``OnFrameStart`` every frame, the Parameter Execute DAT ``OnPulse`` and
``OnValueChange``, the Script TOPs ``CookRgb`` / ``CookDepth`` (the newest frame) and ``CookRgbPrev`` /
``CookDepthPrev`` (the previous one), the OSC In DAT ``OnOsc``.

Live page: the Live toggle starts and stops the generator's live session with the Generate, LoRA and Live pages'
parameters (at its value change). Once a start went out, the generation and live parameters that changed
(``OnValueChange`` collects their names) go to it as one steering request at the next ``OnFrameStart``, and there
the Input TOP's image is read (``numpyArray``) at most Live FPS times a second, only when the TOP cooked since the
last one sent (td_bridge.component.InputPacer), and handed to the controller, whose worker thread converts and
sends it (newest wins). Keep and Take name the frame on screen (Frame ID). Live frames show like any other frame.

Frame blend (Blend Time, Sphere page): when a new frame arrives and Blend Time is above 0, the previous-frame
Script TOPs take the frame on screen until then, the newest-frame TOPs the new one (one ``copyNumpyArray`` each),
and the GLSL MAT's ``uBlend.x`` runs from 0 to 1 over Blend Time of wall-clock time (``clock``, monotonic:
TouchDesigner's ``absTime`` pauses with the main timeline, the AbsTime class page says, and a paused timeline
must not freeze a blend half way): the shader crossfades colour and depth (td_bridge.depth.blend_depth). That one value is all
``OnFrameStart`` writes while a blend runs, and nothing once it is done. Blend Time 0 cuts, as before the blend
existed, without touching the previous-frame TOPs. A frame arriving mid-blend starts a new blend from the frame
the running one was heading to; Diagnose's test frame and the frame put back after it are cuts.

Life cycle: ``__init__`` touches no operator. ``onInitTD`` (called by TouchDesigner from 2025.31550,
and by a ``run(..., endFrame=True, delayRef=op.TDResources)`` this class schedules on every build — TDResources'
independent time, so it runs also while the project's timeline is paused; whichever comes first wins) loads the
td_bridge embedded in the component, applies the settings, starts the controller and runs Diagnose once.
``onDestroyTD`` (2025.31550+) and ``__delTD__`` (before) both close it; closing twice is harmless.
No callback raises: a problem goes to *Last Error* and the frames keep flowing.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
import time
from typing import Any

PYZMQ_HELP = ("pyzmq is missing from TouchDesigner's Python. TouchDesigner 2025: create a Python "
              "environment with TDPyEnvManager and `pip install pyzmq`. TouchDesigner 2023: run "
              "`python3.11 -m pip install --target FOLDER pyzmq` with a Python 3.11 and set Bridge Path "
              "to FOLDER. Then pulse Re-init Extensions.")
BRIDGE_SOURCE, STAMP = "bridge_source", "VERSION_STAMP"  # td_bridge's sources and its stamp (td_bridge.stamp)

# Custom parameters that show the controller's state (read-only, set by this extension).
STATE_PARS = {"Status": "status", "Backend": "backend", "Progress": "progress", "Frameid": "frame_id",
              "Jobid": "job_id", "Lasterror": "last_error", "Connected": "connected", "Depthcheck": "depth_check",
              "Liveon": "live_on", "Liverate": "live_rate", "Liveframes": "live_frames", "Liveidle": "live_idle"}
PAR_OF = {attribute: par for par, attribute in STATE_PARS.items()}
# As build_depthfusion.py sets them: the newest frame, then the previous one (for the frame blend).
SCRIPT_TOP_FORMATS = {"rgb": "rgba8fixed", "depth": "mono16fixed",
                      "rgb_prev": "rgba8fixed", "depth_prev": "mono16fixed"}
FRAME_TOPS, PREVIOUS_TOPS = ("rgb", "depth"), ("rgb_prev", "depth_prev")
TEXTURE_LIMIT = 1280  # TouchDesigner Non-Commercial's largest texture side
DIAGNOSTICS = "diagnostics"
SHADER_INFO = "shader_info"  # Info DAT on the GLSL MAT
GEOMETRY_FRAMES = 2  # frames the test frame stays on screen before the outputs are read back
START = "args[0].onInitTD(fallback=True)"


class _SourceLoader(importlib.abc.Loader):
    def __init__(self, source: str, filename: str) -> None:
        self.source, self.filename = source, filename

    def create_module(self, spec):  # the default module object
        return None

    def exec_module(self, module) -> None:
        exec(compile(self.source, self.filename, "exec"), module.__dict__)


def load_package(name: str, sources: dict[str, str]) -> Any:
    """Import package ``name`` from source texts ({"__init__": text, "protocol": text, …}), as the
    release .tox carries td_bridge in Text DATs; relative imports inside it work."""
    if "__init__" not in sources:
        raise ImportError(f"embedded package {name} has no __init__")
    for module in [name] + [f"{name}.{m}" for m in sources if m != "__init__"]:
        sys.modules.pop(module, None)
    package_spec = importlib.util.spec_from_loader(name, _SourceLoader(sources["__init__"], f"<{name}>"),
                                                   is_package=True)
    package_spec.submodule_search_locations = []
    package = importlib.util.module_from_spec(package_spec)
    sys.modules[name] = package

    class Finder(importlib.abc.MetaPathFinder):
        package = name

        def find_spec(self, fullname, path=None, target=None):
            prefix, _, short = fullname.rpartition(".")
            if prefix != name or short not in sources:
                return None
            return importlib.util.spec_from_loader(fullname, _SourceLoader(sources[short], f"<{fullname}>"))

    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "package", None) != name]  # re-init: replace
    sys.meta_path.insert(0, Finder())
    package_spec.loader.exec_module(package)
    return package


def _guarded(method):
    """A callback that never raises into TouchDesigner: the problem goes to Last Error."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - TouchDesigner must keep running whatever happens here
            self._error(f"{method.__name__}: {type(exc).__name__}: {exc}")
            return None

    return call


class DepthFusionExt:
    """Promoted methods: Connect, Disconnect, Generate, Cancel, Recall, DepthFromTop, Upscale, Remix, Live, Keep, Take,
    ApplySettings, Diagnose."""

    def __init__(self, ownerComp: Any) -> None:
        self.ownerComp = ownerComp
        self.controller = None
        self.bridge = False
        self.bridge_from = ""
        self.started = self.closed = False
        self.started_by = ""
        self.diagnosis = ""
        self.fixes: dict[str, Any] = {}  # override parameter → value, from the last geometry check
        self.depth_channels = 1  # 3 where this TouchDesigner's Script TOP refuses one channel
        self._plain_status = "disconnected"  # Status without the diagnosis, while there is no controller
        self._poles = (0.5, 0.5)
        self._previous_poles = self._poles  # uPoles.zw: the previous frame's poles while a blend runs
        self._blend = 1.0  # uBlend.x: 0 shows the previous frame, 1 the newest (no blend running)
        self._blend_from = None  # self.clock() when the running blend started; None when none runs
        self.clock = time.monotonic  # seconds, for the frame blend (the tests drive it with the frame loop)
        self._previous = None  # the frame in the previous-frame TOPs
        self._controller_error = ""
        self._report = None  # the Diagnose report a running geometry check adds to
        self._test_frame = None  # the geometry check's frame while it is on screen
        self._idle_frame = None  # shown when no frame has arrived (black after a geometry check)
        self._poles_before_check = self._poles
        self._live = False  # a live start went to the generator (and no stop since): steering and input follow
        self._steering: set[str] = set()  # schema names of the live parameters changed since the last frame start
        self._pacer = None  # td_bridge.component.InputPacer: when the Input TOP's image is read and sent
        self._input_sent = False  # an input image went to the generator and was not cleared since
        try:
            import td  # TouchDesigner's module (the stand-in in the tests)

            td.run(START, self, endFrame=True, delayFrames=1, delayRef=td.op.TDResources)
        except Exception as exc:  # noqa: BLE001 - never fail the extension's construction
            self._pending_error = f"cannot schedule the start: {exc}"
        else:
            self._pending_error = ""

    # ------------------------------------------------------------ life cycle

    def onInitTD(self, fallback: bool = False) -> None:
        """Start once: TouchDesigner 2025.31550+ calls this; older builds get the run() of __init__."""
        if self.started or self.closed:
            return
        self.started, self.started_by = True, "run(endFrame, delayRef=op.TDResources)" if fallback else "onInitTD"
        self._start()

    @_guarded
    def _start(self) -> None:
        if self._pending_error:
            self._error(self._pending_error)
        try:
            self._import_bridge()
        except Exception as exc:  # noqa: BLE001 - a broken or missing td_bridge is reported, never raised
            self._plain_status = "td_bridge missing"
            self._show(status=self._plain_status, last_error=f"cannot import td_bridge: {type(exc).__name__}: {exc}")
            return
        self.bridge = True
        self.ApplySettings()
        try:
            from td_bridge.component import ComponentController, InputPacer
        except ImportError as exc:
            missing = "zmq" in str(exc)
            self._plain_status = "pyzmq missing" if missing else "td_bridge missing"
            self._show(status=self._plain_status,
                       last_error=PYZMQ_HELP if missing else f"cannot import td_bridge: {exc}")
        else:
            self.controller, self._pacer = ComponentController(), InputPacer()
            if self._value("Autoconnect"):
                self.Connect()
        self.Diagnose()

    def onDestroyTD(self) -> None:
        """TouchDesigner 2025.31550+ calls this before the extension is re-initialised or destroyed."""
        self._close()

    def __delTD__(self) -> None:
        """Builds before 2025.31550 call this when extensions are re-initialised."""
        self._close()

    def _close(self) -> None:
        self.closed = True
        controller, self.controller = self.controller, None
        if controller is not None:
            controller.close()

    def _import_bridge(self) -> None:
        """td_bridge from the copy embedded in this component (whatever else is on the path: it matches these
        parameter pages); from the path only when the component carries none. Bridge Path is for pyzmq."""
        folder = str(self._value("Bridgepath") or "").strip()
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
        embedded = self.ownerComp.op(BRIDGE_SOURCE)
        if embedded is None:
            import td_bridge

            self.bridge_from = f"{getattr(td_bridge, '__file__', '?')} (no embedded copy)"
            return
        stamp = embedded.op(STAMP)
        load_package("td_bridge", {dat.name: dat.text for dat in embedded.children if dat.name != STAMP})
        self.bridge_from = f"the embedded copy {stamp.text.strip() if stamp is not None else '(no stamp)'}"

    # ------------------------------------------------------------ promoted methods

    @_guarded
    def Connect(self) -> None:
        """Connect; with Live on, start the live session there too (e.g. after the generator restarted)."""
        self._run(lambda c: c.connect(self._value("Framesaddress"), self._value("Commandsaddress")))
        if self.controller is not None and self.controller.is_connected and self._value("Live"):
            self.Live()

    @_guarded
    def Disconnect(self) -> None:
        self._run(lambda c: c.disconnect())

    @_guarded
    def Generate(self) -> None:
        from td_bridge.params import GENERATION_PARAMS

        from td_bridge.params import UPSCALE_PARAMS

        values = self._schema_values(GENERATION_PARAMS)
        upscale = self._schema_values(UPSCALE_PARAMS) if self._value("Upscaleafter") else None
        self._run(lambda c: c.generate(values, upscale))

    @_guarded
    def Upscale(self, frame_id: str | None = None) -> None:
        """Upscale a kept frame (default: the one on screen) with the Upscale page's parameters."""
        from td_bridge.params import UPSCALE_PARAMS

        values = self._schema_values(UPSCALE_PARAMS)
        self._run(lambda c: c.upscale(self._value("Frameid") if frame_id is None else frame_id, values))

    @_guarded
    def Remix(self, frame_id: str | None = None) -> None:
        """Remix a kept frame (default: the one on screen): the Remix page's region, or the Mask TOP's white if
        set, regenerated with the Generate and LoRA pages' parameters. The Mask TOP's image is resampled to the
        size of the frame on screen; for another frame it must have that frame's size."""
        from td_bridge.params import GENERATION_PARAMS, REMIX_PARAMS

        values, region = self._schema_values(GENERATION_PARAMS), self._schema_values(REMIX_PARAMS)
        mask = size = None
        top = self._top(self._value("Masktop"))
        if top is not None:
            top.cook()  # only if required: a TOP nothing else cooks still holds its current image
            mask = top.numpyArray()  # float32, rows bottom first; converted on the controller's worker thread
            if mask is None:
                self._error(f"Remix: the Mask TOP {top.name} has no image yet")
                return
            shown = self.controller.frame if self.controller is not None else None
            if frame_id is None and shown is not None:
                size = (shown.rgb.shape[1], shown.rgb.shape[0])
        frame = self._value("Frameid") if frame_id is None else frame_id
        self._run(lambda c: c.remix(frame, values, region, mask, size))

    @_guarded
    def Cancel(self) -> None:
        self._run(lambda c: c.cancel())

    @_guarded
    def Recall(self, name: str | None = None) -> None:
        """Publish a kept frame again: a frame id or cue name (default: the Recall Name parameter)."""
        self._run(lambda c: c.recall(self._value("Recallname") if name is None else name))

    @_guarded
    def DepthFromTop(self, top: Any = None) -> None:
        """Send a TOP's image (default: the Depth Source TOP parameter) to the generator's depth model."""
        from td_bridge.params import ESTIMATION_PARAMS
        from td_bridge.top_frames import from_top

        source = self._top(self._value("Depthtop") if top is None else top)
        if source is None:
            self._error("Depth from TOP: set Depth Source TOP to a TOP")
            return
        pixels = source.numpyArray()  # float32 in [0, 1], rows bottom first as TouchDesigner stores them
        if pixels is None or pixels.ndim != 3:
            self._error(f"Depth from TOP: {source.name} has no image yet")
            return
        rgb = from_top(pixels)
        values = self._schema_values(ESTIMATION_PARAMS)
        self._run(lambda c: c.estimate(rgb, values))

    @_guarded
    def Live(self) -> None:
        """Start or stop the generator's live session as the Live toggle says; it starts with the Generate, LoRA
        and Live pages' parameters (and the Input TOP's image at the next frame)."""
        from td_bridge.params import GENERATION_PARAMS, LIVE_PARAMS

        on = bool(self._value("Live"))
        self._steering.clear()  # a start sends every value
        if on and self._pacer is not None:
            self._pacer.reset()
        values = self._schema_values(GENERATION_PARAMS + LIVE_PARAMS) if on else None
        self._live = self._run(lambda c: c.live(on, values)) and on

    @_guarded
    def Keep(self, frame_id: str | None = None) -> None:
        """Store a frame (default: the one on screen) in the generator's library as shown, under the Cue if set."""
        frame = self._value("Frameid") if frame_id is None else frame_id
        cue = self._value("Cue")
        self._run(lambda c: c.keep(frame, cue))

    @_guarded
    def Take(self, frame_id: str | None = None) -> None:
        """Queue a full-quality render of a live frame (default: the one on screen); with Take Upscale on, upscaled
        with the Upscale page's parameters."""
        from td_bridge.params import UPSCALE_PARAMS

        frame = self._value("Frameid") if frame_id is None else frame_id
        upscale = self._schema_values(UPSCALE_PARAMS) if self._value("Takeupscale") else None
        self._run(lambda c: c.take(frame, upscale))

    @_guarded
    def ApplySettings(self) -> None:
        """Write what the Depth, Sphere, Stereo, Outputs, OSC and Diagnose pages imply into the operators.
        Each parameter is written on its own: one that fails is listed in Last Error, the rest still apply;
        values out of range change nothing (the last good settings stay)."""
        if not self.bridge:
            return
        try:
            settings = self._settings()
        except ValueError as exc:  # ParamError too: out-of-range values set by script or expression
            self._error(f"settings not applied: {exc}")
            return
        problems = [f"{path}.{name} = {value!r}: {reason}" for path, name, value, reason in self._write(settings)]
        problems += self._apply_shader_position()
        if problems:
            self._error(f"settings: {len(problems)} not applied: " + "; ".join(problems))
        elif str(self.ownerComp.par.Lasterror.eval()).startswith("settings"):
            self._show(last_error="")

    @_guarded
    def Diagnose(self) -> str:
        """Check the component in this TouchDesigner; the report goes to the diagnostics DAT, a summary to
        Status. The geometry check then shows a test frame for a few frames and adds its findings to the
        report. Returns the report as it stands now."""
        from td_bridge.diagnose import Report

        report = Report()
        self._diagnose_versions(report)
        if self.bridge:
            try:
                settings = self._settings()
            except ValueError as exc:
                report.problem(f"settings: {exc}")
            else:
                for path, name, value, reason in self._check(settings):
                    report.problem(f"{path}.{name} = {value!r}: {reason}")
                report.note(f"parameters written: {sum(len(v) for v in settings.values())} checked")
        self._diagnose_live(report)
        self._diagnose_shader(report)
        self._diagnose_tops(report)
        self._report = report
        if self.bridge and self._test_frame is None:
            self._start_geometry_check(report)
        return self._publish(report)

    @_guarded
    def ApplyFixes(self) -> None:
        """Set the Diagnose page's convention parameters the last geometry check found wrong."""
        if not self.fixes:
            self._show(status=f"{self._status_line()} · no fixes to apply")
            return
        for name, value in self.fixes.items():
            self.ownerComp.par[name].val = value
        applied = ", ".join(f"{name} = {value}" for name, value in self.fixes.items())
        self.fixes = {}
        self.ApplySettings()
        self._error(f"fixes applied: {applied}; pulse Diagnose to check again")

    # ------------------------------------------------------------ callbacks (thin shims call these)

    @_guarded
    def OnPulse(self, par: Any) -> None:
        actions = {"Connect": self.Connect, "Disconnect": self.Disconnect, "Generate": self.Generate,
                   "Cancel": self.Cancel, "Recall": self.Recall, "Depthfromtop": self.DepthFromTop,
                   "Upscale": self.Upscale, "Diagnose": self.Diagnose, "Applyfixes": self.ApplyFixes,
                   "Keep": self.Keep, "Take": self.Take, "Remix": self.Remix}
        if par.name in actions:
            actions[par.name]()

    @_guarded
    def OnValueChange(self, par: Any) -> None:
        """Live starts or stops the live session; a generation or live parameter, changed while Live is on, steers
        it at the next frame start; the other watched parameters are the ones ApplySettings reads."""
        if not self.bridge:
            return
        from td_bridge.params import GENERATION_PARAMS, LIVE_PARAMS, td_name

        steering = {td_name(p.name): p.name for p in GENERATION_PARAMS + LIVE_PARAMS}
        if par.name == "Live":
            if bool(par.eval()) != self._live:  # not when Connect already started it
                self.Live()
        elif par.name in steering:
            if self._live:
                self._steering.add(steering[par.name])
        else:
            self.ApplySettings()

    @_guarded
    def OnOsc(self, address: str, args: list[Any]) -> None:
        """One message from the OSC In DAT: set a parameter or run an action; problems in Last Error."""
        if not self.bridge:
            return
        from td_bridge.component_osc import route
        from td_bridge.params import td_name

        try:
            message = route(address, args)
        except ValueError as exc:
            self._error(f"OSC {address}: {exc}")
            return
        if message.kind == "set":
            self.ownerComp.par[td_name(message.name)].val = message.value
        elif message.name == "generate":
            if message.value is not None:
                self.ownerComp.par.Prompt.val = message.value
            self.Generate()
        elif message.name == "recall":
            self.Recall(message.value)
        else:
            {"cancel": self.Cancel, "connect": self.Connect, "disconnect": self.Disconnect}[message.name]()

    @_guarded
    def OnFrameStart(self, frame: int) -> None:
        if self.controller is None:
            return
        self._advance_blend()
        on_screen = self._frame()
        frame_in = self.controller.update()
        if frame_in is not None and self._test_frame is None:  # a running geometry check shows its own frame
            self._show_frame(frame_in, on_screen)
        if self.controller.is_connected and self._live:
            self._steer()
            self._feed_input()
        state = self.controller.state
        values = {attribute: getattr(state, attribute) for attribute in STATE_PARS.values() if attribute != "last_error"}
        values["status"] = self._status_line()
        if state.last_error != self._controller_error:  # a new answer from the generator
            self._controller_error = values["last_error"] = state.last_error
        self._show(**values)

    @_guarded
    def CookRgb(self, scriptOp: Any) -> None:
        frame = self._frame()
        if frame is not None:
            scriptOp.copyNumpyArray(frame.rgb)

    @_guarded
    def CookDepth(self, scriptOp: Any) -> None:
        """The frame's 16-bit depth as one channel; as three (same mono16fixed format) where this TouchDesigner
        refuses one (an older Script TOP page allows only 3 or 4 channels)."""
        self._copy_depth(scriptOp, self._frame())

    @_guarded
    def CookRgbPrev(self, scriptOp: Any) -> None:
        """The previous frame's colour (the frame blend's start)."""
        if self._previous is not None:
            scriptOp.copyNumpyArray(self._previous.rgb)

    @_guarded
    def CookDepthPrev(self, scriptOp: Any) -> None:
        """The previous frame's depth, as CookDepth copies depth."""
        self._copy_depth(scriptOp, self._previous)

    def _copy_depth(self, scriptOp: Any, frame: Any) -> None:
        import numpy as np

        if frame is None:
            return
        if self.depth_channels == 1:
            try:
                scriptOp.copyNumpyArray(frame.depth)
                return
            except Exception as exc:  # noqa: BLE001 - any refusal: try the 3-channel form
                self.depth_channels = 3
                self._error(f"depth: a 1-channel copy was refused ({exc}); sending 3 channels")
        scriptOp.copyNumpyArray(np.ascontiguousarray(np.repeat(frame.depth, 3, axis=2)))

    # ------------------------------------------------------------ live session (while Live is on)

    def _steer(self) -> None:
        """The live parameters changed since the last frame start, in one request."""
        if not self._steering:
            return
        from td_bridge.params import td_name

        names, self._steering = self._steering, set()
        values = {name: self._value(td_name(name)) for name in names}
        self._run(lambda c: c.steer(values))

    def _feed_input(self) -> None:
        """The Input TOP's image to the live session when the pacer says (at most Live FPS a second, only when the
        TOP cooked since the last one sent); an Input TOP emptied clears the input. ``cook()`` cooks only if
        required (a playing movie or a camera; a still image does not), so a TOP nothing else cooks still updates."""
        top = self._top(self._value("Inputtop"))
        if top is None:
            if self._input_sent:
                self._input_sent = False
                self._run(lambda c: c.live_input(None))
            return
        now = self.clock()
        if not self._pacer.due(now, float(self._value("Livefps"))):
            return
        top.cook()
        if not self._pacer.changed(top.totalCooks):
            return
        pixels = top.numpyArray()  # float32, rows bottom first; converted on the controller's worker thread
        if pixels is None:
            return
        self._pacer.sent(now, top.totalCooks)
        self._input_sent = True
        self._run(lambda c: c.live_input(pixels))

    def _frame(self) -> Any:
        """The frame the Script TOPs show: the geometry check's test frame while it runs, else the newest."""
        if self._test_frame is not None:
            return self._test_frame
        if self.controller is not None and self.controller.frame is not None:
            return self.controller.frame
        return self._idle_frame

    def _show_frame(self, frame: Any, previous: Any = None) -> None:
        """Put ``frame`` into the newest-frame TOPs: a cut, or, given ``previous`` (the frame on screen until now)
        and a Blend Time above 0, the start of a blend from it (the previous-frame TOPs take it)."""

        blend = previous is not None and previous is not frame and float(self._value("Blendtime")) > 0
        if blend:
            self._previous = previous
            for name in PREVIOUS_TOPS:
                self.ownerComp.op(name).cook(force=True)
        for name in FRAME_TOPS:
            self.ownerComp.op(name).cook(force=True)
        self._blend_from = self.clock() if blend else None
        self._set_frame_uniforms(frame.poles, previous.poles if blend else frame.poles, 0.0 if blend else 1.0)

    def _advance_blend(self) -> None:
        """While a blend runs: its factor from the time since the frame arrived, into uBlend.x (one value)."""
        if self._blend_from is None:
            return
        from td_bridge.render_setup import blend_factor

        self._blend = blend_factor(self.clock() - self._blend_from, float(self._value("Blendtime")))
        if self._blend >= 1.0:
            self._blend_from = None
        self._write_uniforms({"uBlend": (self._blend, 0.0, 0.0, 0.0)})

    # ------------------------------------------------------------ settings

    def _build(self) -> tuple[int, int]:
        import td
        from td_bridge.td_builds import parse_build

        return parse_build(td.app.version, td.app.build)

    def _settings(self) -> dict[str, dict[str, Any]]:
        """Every derived operator parameter, by operator path (raises ValueError for bad values)."""
        from td_bridge.params import CONVENTION_PARAMS, DISPLAY_PARAMS, VIEW_PARAMS
        from td_bridge.render_setup import MATERIAL, render_settings, shader_uniforms

        display, view = self._schema_values(DISPLAY_PARAMS), self._schema_values(VIEW_PARAMS)
        settings = render_settings(display, view, self._build(), self._schema_values(CONVENTION_PARAMS))
        settings[MATERIAL].update(self._uniform_pars(shader_uniforms(display, view["edges"], self._poles,
                                                                     self._previous_poles, self._blend)))
        settings["osc_in"] = {"active": self._value("Oscin"), "port": self._value("Oscport"),
                              "localaddress": self._value("Osclocaladdress")}
        return settings

    def _check(self, settings: dict[str, dict[str, Any]]) -> list[tuple[str, str, Any, str]]:
        """(operator, parameter, value, reason) for each setting TouchDesigner would refuse."""
        problems = []
        for path, values in settings.items():
            target = self.ownerComp.op(path)
            for name, value in values.items():
                par = None if target is None else target.par[name]
                if target is None:
                    problems.append((path, name, value, "no such operator"))
                elif par is None:
                    problems.append((path, name, value, f"{target.OPType} has no parameter {name!r}"))
                elif par.isMenu and par.menuNames and value not in par.menuNames:
                    problems.append((path, name, value, f"not in its menu {list(par.menuNames)}"))
        return problems

    def _write(self, settings: dict[str, dict[str, Any]]) -> list[tuple[str, str, Any, str]]:
        """Write each setting on its own; returns what failed."""
        failed = self._check(settings)
        refused = {(path, name) for path, name, _, _ in failed}
        for path, values in settings.items():
            target = self.ownerComp.op(path)
            for name, value in values.items():
                if (path, name) in refused:
                    continue
                try:
                    par = target.par[name]
                    if par.eval() != value:
                        par.val = value
                except Exception as exc:  # noqa: BLE001 - one parameter must not stop the others
                    failed.append((path, name, value, f"{type(exc).__name__}: {exc}"))
        return failed

    def _position(self) -> str:
        from td_bridge.td_builds import POSITION_MENU, vertex_position_input

        chosen = POSITION_MENU.get(self._value("Shaderposition"))
        return chosen or vertex_position_input(self._build())

    def _apply_shader_position(self) -> list[str]:
        from td_bridge.td_builds import with_position

        vertex = self.ownerComp.op("vertex")
        if vertex is None:
            return ["vertex: the vertex shader DAT is missing"]
        try:
            text = with_position(vertex.text, self._position())
        except ValueError as exc:
            return [f"vertex: {exc}"]
        if text != vertex.text:
            vertex.text = text
        return []

    def _uniform_pars(self, uniforms: dict[str, tuple[float, ...]]) -> dict[str, float]:
        """GLSL MAT Vectors-page parameter values for ``uniforms``, found by uniform name."""
        from td_bridge.render_setup import MATERIAL

        mat = self.ownerComp.op(MATERIAL)
        index = {mat.par[f"vec{i}name"].eval(): i for i in range(mat.seq.vec.numBlocks)}
        missing = [name for name in uniforms if name not in index]
        if missing:
            raise ValueError(f"{MATERIAL} has no vector uniform named {', '.join(missing)}")
        return {f"vec{index[name]}value{axis}": float(value)
                for name, vector in uniforms.items() for axis, value in zip("xyzw", vector)}

    def _set_frame_uniforms(self, poles: tuple[float, float], previous_poles: tuple[float, float],
                            blend: float) -> None:
        self._poles, self._previous_poles, self._blend = poles, previous_poles, blend
        self._write_uniforms({"uPoles": (*poles, *previous_poles), "uBlend": (blend, 0.0, 0.0, 0.0)})

    def _write_uniforms(self, uniforms: dict[str, tuple[float, ...]]) -> None:
        """Write the GLSL MAT's vector values that changed (nothing downstream re-cooks for the others)."""
        from td_bridge.render_setup import MATERIAL

        mat = self.ownerComp.op(MATERIAL)
        for name, value in self._uniform_pars(uniforms).items():
            par = mat.par[name]
            if par.eval() != value:
                par.val = value

    # ------------------------------------------------------------ diagnosis

    def _diagnose_versions(self, report: Any) -> None:
        import td

        from_build = "?"
        try:
            build = self._build()
        except ValueError as exc:
            report.problem(str(exc))
        else:
            from td_bridge.td_builds import OLDEST_SUPPORTED, build_text, has_extension_hooks

            from_build = build_text(build)
            if build < OLDEST_SUPPORTED:
                report.problem(f"TouchDesigner {from_build} is older than the oldest supported build "
                               f"{build_text(OLDEST_SUPPORTED)}")
            hooks = "onInitTD/onDestroyTD" if has_extension_hooks(build) else "__delTD__"
            report.note(f"extension hooks of this build: {hooks}; started by {self.started_by or 'nothing yet'}")
        report.note(f"{td.app.product} version {td.app.version} build {td.app.build} ({from_build}) "
                    f"on {td.app.osName}")
        report.note(f"Python {sys.version.split()[0]}")
        for module in ("numpy", "zmq"):
            try:
                version = importlib.import_module(module).__version__
            except ImportError:
                version = "missing"
                if module == "zmq":
                    report.problem("pyzmq is missing: " + PYZMQ_HELP)
            report.note(f"{'pyzmq' if module == 'zmq' else module} {version}")
        report.note(f"td_bridge from {self.bridge_from or 'nowhere (not loaded)'}")
        if self.bridge:
            self._diagnose_other_bridge(report)

    def _diagnose_other_bridge(self, report: Any) -> None:
        """Name a td_bridge on TouchDesigner's Python path whose version differs from the one in use."""
        import importlib.machinery
        from pathlib import Path

        from td_bridge.stamp import folder_stamp

        spec = importlib.machinery.PathFinder.find_spec("td_bridge")  # the path only, not the embedded copy
        if spec is None or not spec.submodule_search_locations:
            return
        folder = Path(list(spec.submodule_search_locations)[0])
        stamp = self.ownerComp.op(BRIDGE_SOURCE).op(STAMP) if self.ownerComp.op(BRIDGE_SOURCE) else None
        ours = stamp.text.strip() if stamp is not None else "?"
        theirs = folder_stamp(folder)
        if theirs == ours:
            report.note(f"td_bridge on the path ({folder}) is the same version {theirs}")
        else:
            report.warning(f"another td_bridge on the path ({folder}) is version {theirs}, the embedded copy "
                           f"in use {ours}: code importing td_bridge from elsewhere may not match this component")

    def _diagnose_live(self, report: Any) -> None:
        """The live session, when the Live toggle or the generator says it is on."""
        state = self.controller.state if self.controller is not None else None
        if not self._value("Live") and not (state is not None and state.live_on):
            return
        generator = "not connected" if state is None or not state.connected else (
            f"on, {state.live_rate:.1f} fps, {state.live_frames} frames{', idle' if state.live_idle else ''}"
            if state.live_on else "off")
        value = self._value("Inputtop")
        top = self._top(value)
        source = top.path if top is not None else f"{value!r} is not a TOP" if str(value or "").strip() else "none"
        report.note(f"live: toggle {'on' if self._value('Live') else 'off'}, generator {generator}; "
                    f"Input TOP: {source}")

    def _diagnose_shader(self, report: Any) -> None:
        from td_bridge.render_setup import MATERIAL, render

        report.note(f"shader position input: {self._position()} (Shader Position: {self._value('Shaderposition')})")
        renderer = self.ownerComp.op(render("left"))
        if renderer is not None:
            renderer.cook(force=True)  # errors() does not cook: compile the material before reading them
        info = self.ownerComp.op(SHADER_INFO)
        if info is not None and info.text.strip():
            report.note(f"{MATERIAL} info: " + " | ".join(line.strip() for line in info.text.splitlines()
                                                           if line.strip())[:2000])
        for name in (MATERIAL, "vertex", "pixel"):
            node = self.ownerComp.op(name)
            if node is None:
                report.problem(f"{name}: missing")
                continue
            for kind, text in (("error", node.errors()), ("warning", node.warnings())):
                if text:
                    (report.problem if kind == "error" else report.warning)(f"{name} {kind}s: {text}")

    def _diagnose_tops(self, report: Any) -> None:
        import numpy as np

        frame = self._frame() if self._frame() is not self._idle_frame else None  # what the TOPs should hold
        for name, wanted in SCRIPT_TOP_FORMATS.items():
            top = self.ownerComp.op(name)
            if top is None:
                report.problem(f"{name}: missing")
                continue
            actual = top.pixelFormatName
            if actual != wanted:
                report.problem(f"{name}: pixel format {actual}, not {wanted}")
            if name not in FRAME_TOPS:  # the previous frame's TOPs: their contents change only during a blend
                continue
            if frame is None:
                report.note(f"{name}: no frame received yet; its contents are not checked")
                continue
            sent = (frame.rgb if name == "rgb" else frame.depth).astype(np.float64)
            sent /= 255.0 if name == "rgb" else 65535.0
            problem = _read_back_problem(top, sent, name)
            if problem and name == "depth" and self.depth_channels == 1 and actual == wanted:
                self.depth_channels = 3  # the older Script TOP page allows only 3 or 4 channels: try that form
                top.cook(force=True)
                retry = _read_back_problem(top, sent, name)
                if retry:
                    report.problem(f"depth: {problem}; with 3 channels too: {retry}")
                else:
                    report.warning(f"depth: 1 channel read back wrong ({problem}); now sent as 3 channels, "
                                   f"{actual}, frame values intact")
            elif problem:
                report.problem(f"{name}: {problem}")
            else:
                report.note(f"{name}: {actual}, {self.depth_channels if name == 'depth' else 3} channel(s) sent, "
                            "frame values intact")
        for out in sorted((c for c in self.ownerComp.children if c.OPType == "outTOP"), key=lambda c: c.name):
            size = f"{out.width}×{out.height}"
            if max(out.width, out.height) > TEXTURE_LIMIT:
                report.warning(f"{out.name}: {size}, over TouchDesigner Non-Commercial's "
                               f"{TEXTURE_LIMIT}×{TEXTURE_LIMIT}")
            else:
                report.note(f"{out.name}: {size}")

    # ------------------------------------------------------------ geometry check

    def _start_geometry_check(self, report: Any) -> None:
        """Show td_bridge.geometry_check's test frame; GEOMETRY_FRAMES frames later read the outputs back."""
        import td
        from td_bridge.geometry_check import test_frame
        from td_bridge.params import DISPLAY_PARAMS, VIEW_PARAMS
        from td_bridge.protocol import Frame
        from td_bridge.render_setup import GEOMETRY_READBACK
        from td_bridge.top_frames import to_top

        try:
            rgb, depth = test_frame(self._schema_values(DISPLAY_PARAMS), self._schema_values(VIEW_PARAMS))
        except ValueError as exc:
            report.problem(f"geometry check: no test frame ({exc})")
            return
        self._poles_before_check = self._poles
        self._test_frame = to_top(Frame(rgb, depth, {}))
        self._show_frame(self._test_frame)
        for name in GEOMETRY_READBACK.values():  # render it now where TouchDesigner allows
            node = self.ownerComp.op(name)
            if node is not None:
                node.cook(force=True)
        report.note(f"geometry check: test frame shown, results in {GEOMETRY_FRAMES} frames")
        td.run("args[0].FinishGeometryCheck()", self, delayFrames=GEOMETRY_FRAMES, delayRef=td.op.TDResources)

    @_guarded
    def FinishGeometryCheck(self) -> None:
        """Read the outputs back, judge each convention, put the newest frame back and publish the report."""
        if self._test_frame is None:
            return
        from td_bridge.geometry_check import check
        from td_bridge.params import CONVENTION_PARAMS, DISPLAY_PARAMS, VIEW_PARAMS
        from td_bridge.render_setup import GEOMETRY_READBACK

        report = self._report
        try:
            images = {key: self._read_back(name) for key, name in GEOMETRY_READBACK.items()}
            findings = check({k: v for k, v in images.items() if v is not None}, self._schema_values(DISPLAY_PARAMS),
                             self._schema_values(VIEW_PARAMS), self._schema_values(CONVENTION_PARAMS), self._build())
        finally:
            self._test_frame = None
            if self.controller is None or self.controller.frame is None:
                self._idle_frame = _black_frame()  # no frame yet: do not leave the test pattern on screen
                self._set_frame_uniforms(self._poles_before_check, self._poles_before_check, 1.0)
                for name in FRAME_TOPS:
                    self.ownerComp.op(name).cook(force=True)
            else:
                self._show_frame(self.controller.frame)
        self.fixes = {}
        for finding in findings:
            line = f"geometry {finding.name}: {finding.status} — {finding.detail}"
            if finding.status == "wrong":
                self.fixes.update(finding.fix)
                fix = ", ".join(f"{name} = {value!r}" for name, value in finding.fix.items())
                report.problem(f"{line}; fix: {fix or 'none known'}")
            elif finding.status == "verified":
                report.note(line)
            else:
                report.warning(line)
        if self.fixes:
            report.problem("pulse Apply Fixes (Diagnose page) to set " + ", ".join(self.fixes))
        self._publish(report)

    def _read_back(self, name: str) -> Any:
        node = self.ownerComp.op(name)
        return node.numpyArray() if node is not None else None

    def _publish(self, report: Any) -> str:
        text = report.text()
        dat = self.ownerComp.op(DIAGNOSTICS)
        if dat is not None:
            dat.text = text
        self.diagnosis = report.summary()
        self._show(status=self._status_line())
        return text

    # ------------------------------------------------------------ helpers

    def _status_line(self) -> str:
        base = self.controller.state.status if self.controller is not None else self._plain_status
        return f"{base} · {self.diagnosis}" if self.diagnosis else base

    def _value(self, name: str) -> Any:
        par = self.ownerComp.par[name]
        if par is None:
            raise LookupError(f"the component has no parameter {name!r} (an older .tox? build it again)")
        return par.eval()

    def _top(self, value: Any) -> Any:
        """A TOP parameter's operator: TouchDesigner evaluates it to the OP; a path is found from the component.
        None when empty or not a TOP."""
        if isinstance(value, str):
            value = self.ownerComp.op(value) if value.strip() else None
        return value if hasattr(value, "numpyArray") else None

    def _schema_values(self, params: Any) -> dict[str, Any]:
        """{schema name: value} of the custom parameters made from td_bridge.params ``params``."""
        from td_bridge.params import td_name

        return {p.name: self._value(td_name(p.name)) for p in params}

    def _run(self, action) -> bool:
        """Run a controller call; a bad value or a missing connection shows in Last Error. True when it ran."""
        if self.controller is None:
            return False
        try:
            action(self.controller)
        except (ValueError, ConnectionError) as exc:  # ParamError is a ValueError
            self._error(str(exc))
            return False
        return True

    def _error(self, text: str) -> None:
        try:
            self._show(last_error=text)
        except Exception:  # noqa: BLE001 - not even Last Error can be written: say it in the Textport
            print(f"DepthFusion: {text}")

    def _show(self, **values: Any) -> None:
        """Write state parameters; only changed ones, so nothing downstream re-cooks every frame."""
        for attribute, value in values.items():
            par = self.ownerComp.par[PAR_OF[attribute]]
            if par is not None and par.val != value:
                par.val = value


def _read_back_problem(top: Any, sent: Any, name: str) -> str:
    """What is wrong with ``top``'s texture against the frame it was sent (float in [0, 1]); '' if intact."""
    import numpy as np

    shown = top.numpyArray()
    if shown is None:
        return "numpyArray() returned nothing"
    shown = np.asarray(shown, dtype=np.float64)[..., :sent.shape[2]]
    if shown.shape != sent.shape:
        return f"the TOP holds {shown.shape[1]}×{shown.shape[0]}×{shown.shape[2]}, the frame is " \
               f"{sent.shape[1]}×{sent.shape[0]}×{sent.shape[2]}"
    error = min(np.abs(shown - sent).max(), np.abs(shown[::-1] - sent).max())
    step = 1 / 255 if name == "rgb" else 1 / 65535
    if error > step / 2 + 1e-7:
        return f"values off by up to {error * 65535:.0f}/65535 ({top.pixelFormatName} keeps fewer bits)"
    return ""


def _black_frame() -> Any:
    """A small black frame at mid depth: what the Script TOPs hold when no frame has arrived yet."""
    import numpy as np
    from td_bridge.protocol import Frame
    from td_bridge.top_frames import to_top

    return to_top(Frame(np.zeros((8, 16, 3), np.uint8), np.full((8, 16), 32768, np.uint16), {}))

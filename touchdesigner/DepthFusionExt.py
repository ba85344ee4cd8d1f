"""DepthFusion's TouchDesigner extension: a thin shim over td_bridge.component.ComponentController.

The builder (build_depthfusion.py) puts this file into the component's ``DepthFusionExt`` Text
DAT and promotes it, so ``Connect()``, ``Generate()`` … are methods of the component. Everything
worth testing lives in td_bridge (tests/test_component.py); this file moves values between the
component's parameters and operators and the controller, on TouchDesigner's main thread:
the Execute DAT calls ``OnFrameStart`` every frame, the Parameter Execute DAT ``OnPulse`` and
``OnValueChange``, the Script TOPs ``CookRgb`` / ``CookDepth``, the OSC In DAT ``OnOsc``.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

PYZMQ_HELP = ("pyzmq is missing from TouchDesigner's Python. TouchDesigner 2025: create a Python "
              "environment with TDPyEnvManager and `pip install pyzmq`. TouchDesigner 2023: run "
              "`python3.11 -m pip install --target FOLDER pyzmq` with a Python 3.11 and set Bridge Path "
              "to FOLDER. Then pulse Re-init Extensions.")

# Custom parameters that show the controller's state (read-only, set by this extension).
STATE_PARS = {"Status": "status", "Backend": "backend", "Progress": "progress", "Frameid": "frame_id",
              "Jobid": "job_id", "Lasterror": "last_error", "Connected": "connected"}
PAR_OF = {attribute: par for par, attribute in STATE_PARS.items()}


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


class DepthFusionExt:
    """Promoted methods: Connect, Disconnect, Generate, Cancel, Recall."""

    def __init__(self, ownerComp: Any) -> None:
        self.ownerComp = ownerComp
        self.controller = None
        self.bridge = False
        self._poles = (0.5, 0.5)
        try:
            self._import_bridge()
        except ImportError as exc:
            self._show(status="td_bridge missing", last_error=f"cannot import td_bridge: {exc}")
            return
        self.bridge = True
        self.ApplySettings()
        try:
            from td_bridge.component import ComponentController
        except ImportError as exc:
            missing = "zmq" in str(exc)
            self._show(status="pyzmq missing" if missing else "td_bridge missing",
                       last_error=PYZMQ_HELP if missing else f"cannot import td_bridge: {exc}")
            return
        self.controller = ComponentController()
        if self._value("Autoconnect"):
            self.Connect()

    def _import_bridge(self) -> None:
        folder = str(self._value("Bridgepath") or "").strip()
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
        try:
            import td_bridge  # noqa: F401
        except ImportError:
            embedded = self.ownerComp.op("td_bridge")  # the release build carries the sources
            if embedded is None:
                raise
            load_package("td_bridge", {dat.name: dat.text for dat in embedded.children})

    # ------------------------------------------------------------ promoted methods

    def Connect(self) -> None:
        self._run(lambda c: c.connect(self._value("Framesaddress"), self._value("Commandsaddress")))

    def Disconnect(self) -> None:
        self._run(lambda c: c.disconnect())

    def Generate(self) -> None:
        from td_bridge.params import GENERATION_PARAMS

        values = self._schema_values(GENERATION_PARAMS)
        self._run(lambda c: c.generate(values))

    def Cancel(self) -> None:
        self._run(lambda c: c.cancel())

    def Recall(self, name: str | None = None) -> None:
        """Publish a kept frame again: a frame id or cue name (default: the Recall Name parameter)."""
        self._run(lambda c: c.recall(self._value("Recallname") if name is None else name))

    def ApplySettings(self) -> None:
        """Write what the Depth, Sphere, Stereo, Outputs and OSC pages imply into the operators:
        mesh size, shader uniforms, cameras, render and projection sizes, the OSC In DAT."""
        if not self.bridge:
            return
        from td_bridge.params import DISPLAY_PARAMS, VIEW_PARAMS
        from td_bridge.render_setup import MATERIAL, render_settings, shader_uniforms

        display, view = self._schema_values(DISPLAY_PARAMS), self._schema_values(VIEW_PARAMS)
        try:
            settings = render_settings(display, view)
            uniforms = shader_uniforms(display, view["edges"], self._poles)
        except ValueError as exc:  # ParamError too: out-of-range values set by script or expression
            self._show(last_error=f"settings not applied: {exc}")
            return
        settings[MATERIAL] = self._uniform_pars(uniforms)
        settings["osc_in"] = {"active": self._value("Oscin"), "port": self._value("Oscport"),
                              "localaddress": self._value("Osclocaladdress")}
        for path, values in settings.items():
            target = self.ownerComp.op(path)
            for name, value in values.items():
                if target.par[name].eval() != value:
                    target.par[name].val = value

    # ------------------------------------------------------------ callbacks (thin shims call these)

    def OnPulse(self, par: Any) -> None:
        actions = {"Connect": self.Connect, "Disconnect": self.Disconnect, "Generate": self.Generate,
                   "Cancel": self.Cancel, "Recall": self.Recall}
        if par.name in actions:
            actions[par.name]()

    def OnValueChange(self, par: Any) -> None:
        """The Parameter Execute DAT watches only the parameters ApplySettings reads."""
        self.ApplySettings()

    def OnOsc(self, address: str, args: list[Any]) -> None:
        """One message from the OSC In DAT: set a parameter or run an action; problems in Last Error."""
        if not self.bridge:
            return
        from td_bridge.component_osc import route
        from td_bridge.params import td_name

        try:
            message = route(address, args)
        except ValueError as exc:
            self._show(last_error=f"OSC {address}: {exc}")
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

    def OnFrameStart(self, frame: int) -> None:
        if self.controller is None:
            return
        frame_in = self.controller.update()
        if frame_in is not None:
            for name in ("rgb", "depth"):
                self.ownerComp.op(name).cook(force=True)
            self._set_poles(frame_in.poles)
        state = self.controller.state
        self._show(**{attribute: getattr(state, attribute) for attribute in STATE_PARS.values()})

    def CookRgb(self, scriptOp: Any) -> None:
        if self.controller is not None and self.controller.frame is not None:
            scriptOp.copyNumpyArray(self.controller.frame.rgb)

    def CookDepth(self, scriptOp: Any) -> None:
        if self.controller is not None and self.controller.frame is not None:
            scriptOp.copyNumpyArray(self.controller.frame.depth)

    def onDestroyTD(self) -> None:
        """TouchDesigner calls this before the extension is re-initialised or destroyed."""
        if self.controller is not None:
            self.controller.close()

    # ------------------------------------------------------------ helpers

    def _uniform_pars(self, uniforms: dict[str, tuple[float, ...]]) -> dict[str, float]:
        """GLSL MAT Vectors-page parameter values for ``uniforms``, found by uniform name."""
        from td_bridge.render_setup import MATERIAL

        mat = self.ownerComp.op(MATERIAL)
        index = {mat.par[f"vec{i}name"].eval(): i for i in range(mat.seq.vec.numBlocks)}
        return {f"vec{index[name]}value{axis}": float(value)
                for name, vector in uniforms.items() for axis, value in zip("xyzw", vector)}

    def _set_poles(self, poles: tuple[float, float]) -> None:
        from td_bridge.render_setup import MATERIAL

        self._poles = poles
        mat = self.ownerComp.op(MATERIAL)
        for name, value in self._uniform_pars({"uPoles": (*poles, 0.0, 0.0)}).items():
            mat.par[name].val = value

    def _value(self, name: str) -> Any:
        return self.ownerComp.par[name].eval()

    def _schema_values(self, params: Any) -> dict[str, Any]:
        """{schema name: value} of the custom parameters made from td_bridge.params ``params``."""
        from td_bridge.params import td_name

        return {p.name: self._value(td_name(p.name)) for p in params}

    def _run(self, action) -> None:
        """Run a controller call; a bad value or a missing connection shows in Last Error."""
        if self.controller is None:
            return
        try:
            action(self.controller)
        except (ValueError, ConnectionError) as exc:  # ParamError is a ValueError
            self._show(last_error=str(exc))

    def _show(self, **values: Any) -> None:
        """Write state parameters; only changed ones, so nothing downstream re-cooks every frame."""
        for attribute, value in values.items():
            par = self.ownerComp.par[PAR_OF[attribute]]
            if par.val != value:
                par.val = value

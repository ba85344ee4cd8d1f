"""DepthFusion's TouchDesigner extension: a thin shim over td_bridge.component.ComponentController.

The builder (build_depthfusion.py) puts this file into the component's ``DepthFusionExt`` Text
DAT and promotes it, so ``Connect()``, ``Generate()`` … are methods of the component. Everything
worth testing lives in td_bridge (tests/test_component.py); this file moves values between the
component's parameters and operators and the controller, on TouchDesigner's main thread:
the Execute DAT calls ``OnFrameStart`` every frame, the Parameter Execute DAT ``OnPulse``, the
Script TOPs ``CookRgb`` / ``CookDepth``.
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
        try:
            self._import_bridge()
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
        from td_bridge.params import GENERATION_PARAMS, td_name

        values = {p.name: self._value(td_name(p.name)) for p in GENERATION_PARAMS}
        self._run(lambda c: c.generate(values))

    def Cancel(self) -> None:
        self._run(lambda c: c.cancel())

    def Recall(self, name: str | None = None) -> None:
        """Publish a kept frame again: a frame id or cue name (default: the Recall Name parameter)."""
        self._run(lambda c: c.recall(self._value("Recallname") if name is None else name))

    # ------------------------------------------------------------ callbacks (thin shims call these)

    def OnPulse(self, par: Any) -> None:
        actions = {"Connect": self.Connect, "Disconnect": self.Disconnect, "Generate": self.Generate,
                   "Cancel": self.Cancel, "Recall": self.Recall}
        if par.name in actions:
            actions[par.name]()

    def OnFrameStart(self, frame: int) -> None:
        if self.controller is None:
            return
        if self.controller.update() is not None:
            for name in ("rgb", "depth"):
                self.ownerComp.op(name).cook(force=True)
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

    def _value(self, name: str) -> Any:
        return self.ownerComp.par[name].eval()

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

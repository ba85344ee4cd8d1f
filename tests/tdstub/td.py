"""A strict stand-in for TouchDesigner's ``td`` module, built from Derivative's documentation data.

Every operator type, parameter name, tuple part, menu entry and parameter sequence comes from
``td_docs.json``, which ``extract_docs.py`` extracts from a markdown mirror of docs.derivative.ca (its
source and commit are recorded in the file); what the pages do not settle comes from ``td_hand.json``,
each entry with its source. The stand-in knows no parameter outside that data: ``op.par.name`` raises
AttributeError and ``op.par['name']`` returns None, as TouchDesigner does. Its Python classes define only
members the class pages document (tests/test_tdstub.py checks this), plus stand-in controls whose names
start with ``simulate_`` or ``stub_``.

Modelled TouchDesigner behaviour: absolute time (``absTime``, advanced by ``simulate_frame`` at the cook rate of
td_hand.json, dropped frames included), builds (``simulate_build``: ``app.build``/``app.version``, the
extension hooks — ``__delTD__`` before 2025.31550, ``onInitTD``/``onDestroyTD`` from it — and the GLSL
MAT's vertex position input), ``COMP.create`` taking the next numbered name, input ``connect()``
replacing, ``cook()`` cooking only when forced or required (what requires a cook is not modelled: a test says it
with ``stub_cook_required``), Parameter Execute ``onValueChange`` once per frame (``simulate_frame``), ``run()``
counting ``delayFrames`` on ``delayRef``'s time (the project timeline, which ``simulate_timeline`` pauses, or
``op.TDResources``' independent time) with ``endFrame``, Out TOP connectors sorted by name, TOP sizes (custom
resolution, Layout TOP scale resolution, inputs), Script TOP pixel formats and ``copyNumpyArray``'s checks (1–4
channels, or 3–4 as the older page reads: ``simulate_script_top_channels``), a GLSL MAT that compiles when a
Render TOP drawing it cooks (``errors()`` does not cook) and an Info DAT showing its log, and ``COMP.save``
recording what the .tox would hold (``stub_saved``).

Not modelled: rendering (a test may put an image in a TOP's ``stub_rendered`` for ``numpyArray()`` to return,
e.g. one from the project's own renderer), cooking beyond Script TOPs and that compile, expressions other than
``parent.Shortcut.op('name')``.
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DOCS = json.loads((HERE / "td_docs.json").read_text(encoding="utf-8"))
HAND = json.loads((HERE / "td_hand.json").read_text(encoding="utf-8"))
BEHAVIOUR = {name: entry["value"] for name, entry in HAND["behaviours"].items()}
SUPPORTED_BUILDS = tuple(HAND["builds"])
CUSTOM_NAME = re.compile(r"[A-Z][a-z0-9]*")


def _build_key(build: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(build).split("."))


def _since(build: str) -> bool:
    """True when the running build is ``build`` or newer."""
    return (int(app.version), int(app.build)) >= _build_key(build)


# ------------------------------------------------------------------ the application and the frame loop


class App:
    """``td.app``: only the documented members DepthFusion reads."""

    def __init__(self) -> None:
        self.build, self.version, self.osName, self.product = "", "", "Linux (td stand-in)", "TouchDesigner"


app = App()


class AbsTime:
    """``td.absTime``: absolute time, counted from the process start (td_hand.json: abstime). The stand-in's
    process starts with its frame loop: frame 1 (seconds 0) is the first ``simulate_frame``."""

    @property
    def frame(self) -> float:
        return float(_world.frame)

    @property
    def seconds(self) -> float:
        return (_world.frame - BEHAVIOUR["abstime"]["first_frame"]) / BEHAVIOUR["abstime"]["cook_rate"]

    @property
    def step(self) -> float:
        return float(_world.step)

    @property
    def stepSeconds(self) -> float:
        return _world.step / BEHAVIOUR["abstime"]["cook_rate"]


absTime = AbsTime()


class _World:
    """What TouchDesigner's frame loop holds: the frame number, the project timeline, delayed runs, pending
    value changes."""

    def __init__(self) -> None:
        self.frame = 0  # absolute frames: TouchDesigner cooks them whether the timeline plays or not
        self.step = 1  # absolute frames between the start of the previous frame and this one (absTime.step)
        self.timeline_frame, self.playing = 0, True
        self.runs: list[_Run] = []
        self.changes: dict[int, tuple[Par, Any]] = {}
        self.valuechange_args = tuple(BEHAVIOUR["valuechange_signatures"][0])
        self.root: COMP | None = None
        self.resources: COMP | None = None  # op.TDResources, on an independent time
        self.script_top_channels = tuple(BEHAVIOUR["script_top_channels"]["current"])


_world = _World()


def simulate_build(build: str, valuechange_args: tuple[str, ...] | None = None) -> None:
    """Act as TouchDesigner ``build`` (one of SUPPORTED_BUILDS); optionally call onValueChange with
    the other documented signature."""
    if build not in HAND["builds"]:
        raise ValueError(f"the td stand-in models the builds {', '.join(SUPPORTED_BUILDS)}, not {build}")
    app.version, app.build = build.split(".")  # td_hand.json: app_build_format
    if valuechange_args is not None:
        if list(valuechange_args) not in BEHAVIOUR["valuechange_signatures"]:
            raise ValueError(f"undocumented onValueChange signature {valuechange_args}")
        _world.valuechange_args = tuple(valuechange_args)


simulate_build(SUPPORTED_BUILDS[-1])


def simulate_timeline(playing: bool) -> None:
    """Play or pause the project timeline (a project may be saved, and so open, paused)."""
    _world.playing = bool(playing)


def simulate_script_top_channels(reading: str) -> None:
    """Script TOP ``copyNumpyArray`` as one documentation reading has it: "current" (1 to 4 channels) or "older"
    (3 or 4; td_hand.json: script_top_channels)."""
    _world.script_top_channels = tuple(BEHAVIOUR["script_top_channels"][reading])


class _Run:
    """A script ``run()`` scheduled: due once its time has advanced ``delay`` frames (td_hand.json: run_timing)."""

    def __init__(self, script: str, args: tuple, delay: int, independent: bool, end_frame: bool) -> None:
        self.script, self.args, self.end_frame, self.independent = script, args, end_frame, independent
        self.due = self._clock() + max(0, int(delay))

    def _clock(self) -> int:
        return _world.frame if self.independent else _world.timeline_frame

    def ready(self) -> bool:
        return (self.independent or _world.playing) and self._clock() > self.due  # the end of frame `due`


def run(script: str, *args: Any, endFrame: bool = False, fromOP: Any = None, asParameter: bool = False,
        group: Any = None, delayFrames: int = 0, delayMilliSeconds: int = 0, delayRef: Any = None) -> None:
    """Run ``script`` (with ``args`` bound) once ``delayFrames`` frames of ``delayRef``'s time have passed: the
    project timeline by default (``me`` in TouchDesigner: an operator of the project), independent time for
    ``op.TDResources``. A run on a paused timeline waits until it plays."""
    independent = delayRef is not None and delayRef is _world.resources
    _world.runs.append(_Run(script, args, delayFrames, independent, endFrame))


class _OpFinder:
    """``op``: ``op(path)`` finds an operator (relative to a DAT's component inside DAT modules); ``op.Name`` is
    a global OP shortcut (td_hand.json: global_op_shortcuts)."""

    def __init__(self, base: COMP | None = None) -> None:
        self._base = base

    def __call__(self, path: Any) -> OP | None:
        base = self._base if self._base is not None else _world.root
        return base.op(path) if base is not None else None

    def __getattr__(self, name: str) -> OP:
        if name == "TDResources" and _world.resources is not None:
            return _world.resources
        raise AttributeError(f"no global OP shortcut {name!r} in the td stand-in")


op = _OpFinder()


def debug(*args: Any) -> None:
    print(*args)


def simulate_frame(dropped: int = 0) -> int:
    """One TouchDesigner frame, ``dropped`` frames after the one before it was due (absolute time and the
    frame counts jump by 1 + dropped, as when TouchDesigner drops frames): Execute DATs' onFrameStart, then due
    ``run`` scripts, then one onValueChange per changed, watched parameter. The timeline advances only while it
    plays. Returns the absolute frame number."""
    _world.step = 1 + max(0, int(dropped))
    _world.frame += _world.step
    _world.timeline_frame += _world.step * int(_world.playing)
    if _world.root is not None:
        for dat in _world.root.stub_descendants(executeDAT):
            if dat.par.active.eval() and dat.par.framestart.eval():
                dat.module.onFrameStart(_world.frame)
    due = [entry for entry in _world.runs if entry.ready()]
    _world.runs = [entry for entry in _world.runs if not entry.ready()]
    for entry in sorted(due, key=lambda entry: entry.end_frame):  # end-of-frame runs last
        exec(compile(entry.script, "<run>", "exec"), {"op": op, "args": entry.args})
    changes, _world.changes = _world.changes, {}
    for par, previous in changes.values():
        if par.owner.valid and par.eval() != previous:
            for dat in _watchers(par, "valuechange"):
                values = {"par": par, "val": par.eval(), "prev": previous}
                dat.module.onValueChange(*(values[name] for name in _world.valuechange_args))
    return _world.frame


# ------------------------------------------------------------------ parameters


class Par:
    """One parameter. Members: documented ones only (Par Class)."""

    def __init__(self, owner: OP, name: str, style: str | None, *, custom: bool, default: Any = None,
                 page: Page | None = None, menu: list[str] | None = None) -> None:
        self.owner, self.name, self.style, self.isCustom = owner, name, style, custom
        self._default = default
        self._val = default
        self._expr, self._mode = "", ParMode.CONSTANT
        self._label, self._help = name, ""
        self._min = self._max = self._normMin = self._normMax = None
        self._clampMin = self._clampMax = False
        self._menuNames = list(menu) if menu is not None else ([] if style in ("Menu", "StrMenu") else None)
        self._menuLabels = list(self._menuNames) if self._menuNames is not None else None
        self._readOnly, self._enable, self._page = False, True, page

    @property
    def val(self) -> Any:
        return self._val

    @val.setter
    def val(self, value: Any) -> None:
        if self.style == "Pulse":
            raise TypeError(f"{self.name} is a pulse parameter: use .pulse()")
        previous = self.eval()
        self._val, self._mode = self._coerce(value), ParMode.CONSTANT
        _world.changes.setdefault(id(self), (self, previous))

    def _coerce(self, value: Any) -> Any:
        if self.isMenu and self.style != "StrMenu":
            if isinstance(value, int) and not isinstance(value, bool):
                value = self._menuNames[value]
            if value not in self._menuNames:
                raise ValueError(f"{self.owner.path}: {self.name}: {value!r} is not one of the menu names "
                                 f"{self._menuNames}")
            return value
        if self.style == "Toggle":
            return bool(value)
        if self.style == "Int":
            return int(value)
        if self.style == "Float":
            return float(value)
        if self.style in ("Str", "StrMenu", "Folder"):
            return str(value)
        return value

    def eval(self) -> Any:
        if self._mode is ParMode.EXPRESSION:
            return _evaluate(self.owner, self._expr)
        return self._val

    @property
    def expr(self) -> str:
        return self._expr

    @expr.setter
    def expr(self, text: str) -> None:
        self._expr, self._mode = str(text), ParMode.EXPRESSION

    @property
    def mode(self) -> ParMode:
        return self._mode

    def pulse(self, value: Any = 1, frames: int = 0, seconds: float = 0) -> None:
        """Parameter Execute DATs watching it run ``onPulse(par)``."""
        for dat in _watchers(self, "onpulse"):
            dat.module.onPulse(self)

    def _custom_only(self, attribute: str) -> None:
        if not self.isCustom:
            raise AttributeError(f"{attribute} can only be set on custom parameters ({self.name})")

    def _prop(attribute, custom_only=True):  # noqa: N805 - a property factory used in the class body
        def get(self):
            return getattr(self, "_" + attribute)

        def set_(self, value):
            if custom_only:
                self._custom_only(attribute)
            setattr(self, "_" + attribute, value)

        return property(get, set_)

    label = _prop("label")
    default = _prop("default")
    min = _prop("min")
    max = _prop("max")
    clampMin = _prop("clampMin")
    clampMax = _prop("clampMax")
    normMin = _prop("normMin")
    normMax = _prop("normMax")
    readOnly = _prop("readOnly", custom_only=False)
    enable = _prop("enable")
    del _prop

    @property
    def menuNames(self) -> list[str] | None:
        return self._menuNames

    @menuNames.setter
    def menuNames(self, names: list[str]) -> None:
        self._custom_only("menuNames")
        self._menuNames = [str(n) for n in names]

    @property
    def menuLabels(self) -> list[str] | None:
        return self._menuLabels

    @menuLabels.setter
    def menuLabels(self, labels: list[str]) -> None:
        self._custom_only("menuLabels")
        self._menuLabels = [str(n) for n in labels]

    @property
    def help(self) -> str:  # read-only on Par; set it through the ParGroup
        return self._help

    @property
    def page(self) -> Page | None:
        return self._page

    @property
    def isPulse(self) -> bool:
        return self.style == "Pulse"

    @property
    def isMenu(self) -> bool:
        return self._menuNames is not None and self.style != "Pulse"

    def __repr__(self) -> str:
        return f"<Par {self.owner.path}:{self.name}={self._val!r}>"


class ParMode:
    """``td.ParMode`` (the members DepthFusion compares with)."""

    CONSTANT, EXPRESSION, EXPORT, BIND = "CONSTANT", "EXPRESSION", "EXPORT", "BIND"


class ParGroup(list):
    """The parameters on one line; ``appendX`` returns one. Index it for a Par."""

    def __init__(self, name: str, pars: list[Par]) -> None:
        super().__init__(pars)
        self.name = name

    @property
    def help(self) -> str:
        return self[0]._help

    @help.setter
    def help(self, text: str) -> None:
        for par in self:
            par._help = str(text)

    @property
    def label(self) -> str:
        return self[0]._label

    @label.setter
    def label(self, text: str) -> None:
        for par in self:
            par.label = text

    @property
    def readOnly(self) -> bool:
        return self[0]._readOnly

    @readOnly.setter
    def readOnly(self, value: bool) -> None:
        for par in self:
            par.readOnly = value


class ParCollection:
    """``op.par``: ``op.par.name`` raises AttributeError for an unknown name, ``op.par['name']`` is None."""

    def __init__(self, owner: OP) -> None:
        object.__setattr__(self, "owner", owner)
        object.__setattr__(self, "_pars", {})

    def _add(self, par: Par) -> None:
        self._pars[par.name] = par

    def _remove(self, name: str) -> None:
        del self._pars[name]

    def __getattr__(self, name: str) -> Par:
        try:
            return self._pars[name]
        except KeyError:
            raise AttributeError(f"{self.owner.OPType} {self.owner.path} has no parameter {name!r}") from None

    def __getitem__(self, name: str) -> Par | None:
        return self._pars.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__getattr__(name).val = value  # `op.par.x = 5` sets the constant value

    def __iter__(self):
        return iter(list(self._pars.values()))


class Page:
    """A custom parameter page (``COMP.appendCustomPage``)."""

    def __init__(self, owner: COMP, name: str, index: int) -> None:
        self.owner, self.name, self.index, self.isCustom = owner, name, index, True
        self.parGroups: list[ParGroup] = []

    @property
    def pars(self) -> list[Par]:
        return [par for group in self.parGroups for par in group]

    def _append(self, name: str, style: str, label: str | None, replace: bool, default: Any = None) -> ParGroup:
        if not isinstance(name, str) or not CUSTOM_NAME.fullmatch(name):
            raise ValueError(f"invalid custom parameter name {name!r}: a capital letter, then lowercase letters "
                             "and digits")
        if self.owner.par[name] is not None and not replace:
            raise ValueError(f"parameter {name} already exists")
        par = Par(self.owner, name, style, custom=True, default=default, page=self)
        group = ParGroup(name, [par])
        group.label = label if label is not None else name
        self.parGroups.append(group)
        self.owner.par._add(par)
        return group

    def appendFloat(self, name, label=None, size=1, order=None, replace=True) -> ParGroup:
        return self._append(name, "Float", label, replace, 0.0)

    def appendInt(self, name, label=None, size=1, order=None, replace=True) -> ParGroup:
        return self._append(name, "Int", label, replace, 0)

    def appendStr(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Str", label, replace, "")

    def appendMenu(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Menu", label, replace, "")

    def appendToggle(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Toggle", label, replace, False)

    def appendPulse(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Pulse", label, replace)

    def appendFolder(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Folder", label, replace, "")

    def appendTOP(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "TOP", label, replace, "")


class Sequence:
    """A parameter sequence (``op.seq.vec``): ``numBlocks`` blocks of ``name{i}{suffix}`` parameters."""

    def __init__(self, owner: OP, name: str, block: dict[str, dict]) -> None:
        self.owner, self.name, self._block, self._blocks = owner, name, block, 0
        self.numBlocks = BEHAVIOUR["sequence_default_blocks"]

    @property
    def numBlocks(self) -> int:
        return self._blocks

    @numBlocks.setter
    def numBlocks(self, count: int) -> None:
        count = int(count)
        for index in range(self._blocks, count):
            for suffix, info in self._block.items():
                self.owner.stub_add_builtin(f"{self.name}{index}{suffix}", info)
        for index in range(count, self._blocks):
            for suffix in self._block:
                self.owner.par._remove(f"{self.name}{index}{suffix}")
        self._blocks = count


class SequenceCollection(types.SimpleNamespace):
    """``op.seq``: the operator's sequences by name."""

    def __getitem__(self, name: str) -> Sequence:
        return getattr(self, name)


# ------------------------------------------------------------------ operators


class OP:
    """Common operator behaviour; the parameters come from the operator's page in td_docs.json."""

    OPType = "OP"
    stub_inputs = 0  # input connectors
    stub_cook_required = True  # False: nothing new to cook (a still image), so cook() without force does nothing

    def __init__(self, name: str, parent: COMP | None) -> None:
        self.name, self._parent = name, parent
        self.par = ParCollection(self)
        self.nodeX = self.nodeY = 0
        self.totalCooks = 0
        self.valid = True
        self.display = self.render = False
        self._errors: list[str] = []
        docs = DOCS["operators"].get(self.OPType, {"parameters": {}, "sequences": {}})
        for par_name, info in docs["parameters"].items():
            self.stub_add_builtin(par_name, info)
        self.inputConnectors = [Connector(self, i, True) for i in range(self.stub_inputs)]
        self.outputConnectors = [Connector(self, 0, False)]
        self.seq = SequenceCollection(**{n: Sequence(self, n, block) for n, block in docs["sequences"].items()})

    def stub_add_builtin(self, name: str, info: dict) -> None:
        menu = info.get("menu")
        self.par._add(Par(self, name, "Menu" if menu else None, custom=False, default=menu[0] if menu else None,
                          menu=menu))

    @property
    def inputs(self) -> list[OP]:
        """The operators wired into this one, in input order."""
        return [c.connections[0].owner for c in self.inputConnectors if c.connections]

    def destroy(self) -> None:
        for node in self.stub_descendants(COMP, include_self=True):
            node.stub_destroy_extensions()
        self.valid = False
        del self._parent._children[self.name]

    def stub_descendants(self, kind: type, include_self: bool = False) -> list[OP]:
        found = [self] if include_self and isinstance(self, kind) else []
        for child in getattr(self, "_children", {}).values():
            found += child.stub_descendants(kind, include_self=True)
        return found

    @property
    def path(self) -> str:
        if self._parent is None:
            return "/" if not self.name else "/" + self.name
        return self._parent.path.rstrip("/") + "/" + self.name

    def parent(self, n: int = 1) -> COMP | None:
        node = self
        for _ in range(n):
            node = node._parent
        return node

    def cook(self, force: bool = False, recurse: bool = False, includeUtility: bool = False) -> None:
        self._cooks(force)

    def _cooks(self, force: bool) -> bool:
        """Whether ``cook(force)`` cooks: forced, or a cook is required (``stub_cook_required``; td_hand.json:
        cook_if_required); a cook counts in ``totalCooks``."""
        if not (force or self.stub_cook_required):
            return False
        self.totalCooks += 1
        return True

    def errors(self, recurse: bool = False) -> str:
        return "\n".join(self._errors)

    def warnings(self, recurse: bool = False) -> str:
        return ""

    def stub_initialize(self) -> None:
        """Default contents a new operator gets (a Geometry COMP's torus)."""

    def stub_resolve(self, path: Any) -> OP | None:
        """An OP parameter's value as TouchDesigner reads it from this operator: a name is a sibling,
        '..' the component this operator sits in (td_hand.json: parameter_path_dotdot)."""
        if isinstance(path, OP) or path is None:
            return path
        path = str(path)
        if path == "..":
            return self._parent
        if "/" in path:
            raise NotImplementedError(f"the td stand-in resolves only sibling names and '..', not {path!r}")
        return self._parent.op(path)

    def __repr__(self) -> str:
        return f"<{self.OPType} {self.path}>"


class DAT(OP):
    def __init__(self, name: str, parent: COMP | None) -> None:
        super().__init__(name, parent)
        self._text = ""
        self._module: types.ModuleType | None = None

    @property
    def text(self) -> str:
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        self._text, self._module = str(value), None

    @property
    def module(self) -> types.ModuleType:
        """The DAT's text run as a module (TouchDesigner's ``op('x').module``); the td module's members
        are there as in every TouchDesigner script, ``me`` is the DAT."""
        if self._module is None:
            module = types.ModuleType(self.name)
            module.__dict__.update(me=self, parent=lambda n=1: self.parent(n), op=_OpFinder(self._parent), app=app,
                                   absTime=absTime, run=run, debug=debug)
            exec(compile(self._text, self.path, "exec"), module.__dict__)
            self._module = module
        return self._module


class textDAT(DAT):
    OPType = "textDAT"


class executeDAT(DAT):
    """Runs ``onFrameStart(frame)`` from its text at each ``simulate_frame`` while Active and Frame Start are on."""

    OPType = "executeDAT"


class parameterexecuteDAT(DAT):
    """Calls ``onPulse(par)`` at once and ``onValueChange`` once per frame for the parameters it watches."""

    OPType = "parameterexecuteDAT"


class oscinDAT(DAT):
    """Runs its callbacks DAT's ``onReceiveOSC`` for each message while Active is on."""

    OPType = "oscinDAT"

    def simulate_receive(self, address: str, args: list[Any]) -> bool:
        """A message arriving at the port: True when the callback ran."""
        if not self.par.active.eval():
            return False
        dat = self.stub_resolve(self.par.callbacks.eval())
        message = " ".join([address, *map(str, args)])
        dat.module.onReceiveOSC(self, 0, message, message.encode(), 0.0, address, list(args), None)
        return True


def _watchers(par: Par, toggle: str) -> list[parameterexecuteDAT]:
    """Parameter Execute DATs (inside the parameter's operator or beside it) whose ``toggle``
    (onpulse or valuechange) is on and that watch this parameter."""
    owner = par.owner
    places = [owner] if isinstance(owner, COMP) else []
    if owner._parent is not None:
        places.append(owner._parent)
    found = []
    for place in places:
        for dat in place.children:
            if not isinstance(dat, parameterexecuteDAT) or not dat.par.active.eval() or not dat.par[toggle].eval():
                continue
            target = dat.stub_resolve(dat.par.op.eval())
            names = str(dat.par.pars.eval() or "*").split()
            kind_on = dat.par.custom.eval() if par.isCustom else dat.par.builtin.eval()
            if target is owner and kind_on and any(re.fullmatch(n.replace("*", ".*"), par.name) for n in names):
                found.append(dat)
    return found


class COMP(OP):
    OPType = "COMP"

    def __init__(self, name: str, parent: COMP | None) -> None:
        super().__init__(name, parent)
        self._children: dict[str, OP] = {}
        self.customPages: list[Page] = []
        self.ext = types.SimpleNamespace()
        self.extensions: list[Any] = []

    @property
    def children(self) -> list[OP]:
        return list(self._children.values())

    def findChildren(self, depth: int | None = None, **kwargs: Any) -> list[OP]:
        if kwargs or depth != 1:
            raise NotImplementedError("the td stand-in supports findChildren(depth=1) only")
        return self.children

    @property
    def customPars(self) -> list[Par]:
        return [par for page in self.customPages for par in page.pars]

    def appendCustomPage(self, name: str) -> Page:
        page = Page(self, name, len(self.customPages))
        self.customPages.append(page)
        return page

    def create(self, opType: type, name: str | None = None, initialize: bool = True) -> OP:
        """A new child; a taken name gives the next numbered name, as TouchDesigner does."""
        if not (isinstance(opType, type) and issubclass(opType, OP)) or opType.OPType not in DOCS["operators"]:
            raise TypeError(f"create() needs a documented operator type such as textDAT, got {opType!r}")
        name = name or f"{opType.OPType[:-3].lower()}1"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad operator name {name!r} in {self.path}")
        if name in self._children:
            stem, digits = re.fullmatch(r"(.*?)(\d*)", name).groups()
            number = int(digits or 0) + 1
            while f"{stem}{number}" in self._children:
                number += 1
            name = f"{stem}{number}"
        node = opType(name, self)
        self._children[name] = node
        if initialize:
            node.stub_initialize()
        return node

    def op(self, path: Any) -> OP | None:
        if isinstance(path, OP):
            return path
        node: OP | None = self
        for part in str(path).strip("/").split("/") if not str(path).startswith("/") else \
                [_world.root.name, *str(path).strip("/").split("/")][1:]:
            if part in ("", "."):
                continue
            if part == "..":
                node = node._parent
            else:
                node = node._children.get(part) if isinstance(node, COMP) else None
            if node is None:
                return None
        return node

    def initializeExtensions(self, index: int | None = None) -> list[Any]:
        """(Re-)create the extensions of the Extensions page's ``ext`` sequence, as TouchDesigner would:
        the old objects get their destroy hook first; from 2025.31550 the new ones get ``onInitTD`` at
        the end of the frame."""
        self.stub_destroy_extensions()
        self.ext, self.extensions = types.SimpleNamespace(), []
        for block in range(self.seq.ext.numBlocks):
            source = self.par[f"ext{block}object"].eval()
            if not source:
                continue
            match = re.fullmatch(r"op\('\./?(\w+)'\)\.module\.(\w+)\(me\)", source)
            if match is None:
                raise NotImplementedError(f"the td stand-in runs extensions only as op('./DAT').module.Class(me): "
                                          f"{source}")
            dat, cls = match.groups()
            extension = getattr(self.op(dat).module, cls)(self)
            self.extensions.append(extension)
            setattr(self.ext, self.par[f"ext{block}name"].eval() or cls, extension)
            if self.par[f"ext{block}promote"].eval():
                for attribute in dir(extension):
                    if attribute[:1].isupper():
                        setattr(self, attribute, getattr(extension, attribute))
            if _since(BEHAVIOUR["extension_hooks_from"]) and hasattr(extension, "onInitTD"):
                run("args[0].onInitTD()", extension, endFrame=True, delayRef=_world.resources)  # not on the timeline
        return self.extensions

    def stub_destroy_extensions(self) -> None:
        """Each extension's destroy hook; one that raises is printed, as a Textport error, and the rest goes on
        (td_hand.json: destroy_hook_errors)."""
        for extension in self.extensions:
            hook = "onDestroyTD" if _since(BEHAVIOUR["extension_hooks_from"]) else "__delTD__"
            try:
                if hasattr(extension, hook):
                    getattr(extension, hook)()
            except Exception as exc:  # noqa: BLE001 - TouchDesigner reports it and deletes the operator anyway
                print(f"td stand-in: {hook} of {type(extension).__name__} raised {type(exc).__name__}: {exc}")
        self.extensions = []

    def save(self, filepath: str, createFolders: bool = False) -> str:
        """Only TouchDesigner writes .tox files: the stand-in records what the file would hold (every
        operator's parameter values at this moment) in ``stub_saved`` and writes nothing."""
        self.stub_saved = {node.path: {par.name: par.eval() for par in node.par}
                           for node in self.stub_descendants(OP, include_self=True)}
        return str(filepath)


def stub_out_tops(comp: COMP) -> list[outTOP]:
    """The component's Out TOPs in the order of its output connectors: alphanumeric by name."""
    return sorted((c for c in comp.children if isinstance(c, outTOP)), key=lambda o: o.name)


class baseCOMP(COMP):
    OPType = "baseCOMP"


class SOP(OP):
    pass


class sphereSOP(SOP):
    OPType = "sphereSOP"


class torusSOP(SOP):
    OPType = "torusSOP"


class geometryCOMP(COMP):
    """A new Geometry COMP holds a Torus SOP (as in TouchDesigner's network editor)."""

    OPType = "geometryCOMP"

    def stub_initialize(self) -> None:
        torus = self.create(torusSOP, "torus1")
        torus.display = torus.render = True


class cameraCOMP(COMP):
    OPType = "cameraCOMP"


class MAT(OP):
    pass


class glslMAT(MAT):
    """Compiles when cooked (a Render TOP that draws its geometry cooks it): ``errors()`` reports what the last
    compile found, a vertex position input the running build does not declare (td_hand.json), and does not
    cook (td_hand.json: errors_do_not_cook)."""

    OPType = "glslMAT"

    def __init__(self, name: str, parent: COMP | None) -> None:
        super().__init__(name, parent)
        self.stub_log: list[str] = []  # the last compile's messages

    def cook(self, force: bool = False, recurse: bool = False, includeUtility: bool = False) -> None:
        if not self._cooks(force):
            return
        vertex = self.stub_resolve(self.par.vdat.eval())
        if vertex is None:
            self.stub_log = ["Vertex shader DAT not found"]
            return
        declared = stub_vertex_position_input().removesuffix("()")
        self.stub_log = [f"'{name}' : undeclared identifier" for name in ("TDPos", "P")
                         if name != declared and re.search(rf"(?<!\w){name}(?!\w)", _code(vertex.text))]

    def errors(self, recurse: bool = False) -> str:
        return "\n".join(self._errors + self.stub_log)


def _code(text: str) -> str:
    """GLSL text without comments."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def stub_vertex_position_input() -> str:
    """The vertex position input the running build's GLSL MAT declares (td_hand.json)."""
    inputs = BEHAVIOUR["vertex_position_input"]
    return inputs[max((b for b in inputs if _since(b)), key=_build_key)]


class TOP(OP):
    stub_inputs = 1
    stub_rendered: np.ndarray | None = None  # what TouchDesigner would have drawn; the stand-in draws nothing

    def numpyArray(self, delayed: bool = False, writable: bool = False) -> np.ndarray | None:
        """The texture as float32 (H, W, 4), row 0 at the bottom: ``stub_rendered`` when a test supplies an image
        (e.g. one from the project's own renderer), else None."""
        return None if self.stub_rendered is None else np.asarray(self.stub_rendered, dtype=np.float32)

    @property
    def width(self) -> int:
        return self.stub_size()[0]

    @property
    def height(self) -> int:
        return self.stub_size()[1]

    def stub_size(self) -> tuple[int, int]:
        if self.par.outputresolution.eval() == "custom":
            return int(self.par.resolutionw.eval()), int(self.par.resolutionh.eval())
        sources = self.stub_sources()
        return sources[0].stub_size() if sources else (256, 256)

    def stub_sources(self) -> list[TOP]:
        return self.inputs


class scriptTOP(TOP):
    OPType = "scriptTOP"
    stub_inputs = 0

    def __init__(self, name: str, parent: COMP | None) -> None:
        super().__init__(name, parent)
        self._cooking = False
        self.stub_image: np.ndarray | None = None  # what copyNumpyArray last received (the texture, here)

    def cook(self, force: bool = False, recurse: bool = False, includeUtility: bool = False) -> None:
        if not self._cooks(force):
            return
        dat = self.stub_resolve(self.par.callbacks.eval())
        if dat is None:
            raise RuntimeError(f"{self.path}: callbacks DAT {self.par.callbacks.eval()!r} not found")
        self._cooking = True
        try:
            dat.module.onCook(self)
        finally:
            self._cooking = False

    def copyNumpyArray(self, numpyArray: np.ndarray, is3D: bool = False, isCube: bool = False) -> None:
        if not self._cooking and not self.par.modoutsidecook.eval():
            raise RuntimeError("copyNumpyArray outside onCook (turn on Modify Outside of Cook)")
        array = numpyArray
        low, high = _world.script_top_channels
        if not isinstance(array, np.ndarray) or array.ndim != 3 or not low <= array.shape[2] <= high:
            raise ValueError(f"copyNumpyArray needs shape (h, w, {low}-{high}), got "
                             f"{getattr(array, 'shape', type(array))}")
        if array.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f"copyNumpyArray needs uint8, uint16 or float32, got {array.dtype}")
        self.stub_image = array.copy()

    @property
    def pixelFormatName(self) -> str:
        chosen = self.par.format.eval()
        return BEHAVIOUR["script_top_useinput_format"] if chosen == "useinput" else chosen

    def numpyArray(self, delayed: bool = False, writable: bool = False) -> np.ndarray | None:
        """The texture as float32 in [0, 1], quantised to the TOP's pixel format."""
        if self.stub_image is None:
            return None
        image = self.stub_image.astype(np.float64)
        if self.stub_image.dtype != np.float32:
            image /= np.iinfo(self.stub_image.dtype).max
        bits = re.search(r"(\d+)(fixed|float)", self.pixelFormatName)
        if bits and bits.group(2) == "fixed":
            levels = 2 ** int(bits.group(1)) - 1
            image = np.round(image * levels) / levels
        return image.astype(np.float32)  # rows as copyNumpyArray took them (the extension accepts either order)

    def stub_size(self) -> tuple[int, int]:
        if self.stub_image is not None and self.par.outputresolution.eval() != "custom":
            return self.stub_image.shape[1], self.stub_image.shape[0]
        return super().stub_size()


class renderTOP(TOP):
    """Cooking it cooks the material of the geometry it draws (the GLSL MAT compiles)."""

    OPType = "renderTOP"
    stub_inputs = 0

    def cook(self, force: bool = False, recurse: bool = False, includeUtility: bool = False) -> None:
        if not self._cooks(force):
            return
        geometry = self.stub_resolve(self.par.geometry.eval())
        material = geometry.par.material.eval() if geometry is not None else None
        if isinstance(material, MAT):
            material.cook(force=force)


class renderselectTOP(TOP):
    OPType = "renderselectTOP"
    stub_inputs = 0

    def stub_sources(self) -> list[TOP]:
        source = self.stub_resolve(self.par.top.eval())
        return [source] if source is not None else []


class projectionTOP(TOP):
    OPType = "projectionTOP"


class layoutTOP(TOP):
    """With Scale Resolution on, the first input's size times the columns (horizontal) or rows (vertical)."""

    OPType = "layoutTOP"
    stub_inputs = 0

    def stub_sources(self) -> list[TOP]:
        return [self._parent.op(name) for name in str(self.par.top.eval() or "").split()]

    def stub_size(self) -> tuple[int, int]:
        sources = self.stub_sources()
        if self.par.outputresolution.eval() == "custom" or not sources or not self.par.scaleres.eval():
            return super().stub_size()
        width, height = sources[0].stub_size()
        vertical = self.par.align.eval() in ("verttb", "vertbt")
        return (width, height * len(sources)) if vertical else (width * len(sources), height)


class outTOP(TOP):
    OPType = "outTOP"


class flipTOP(TOP):
    OPType = "flipTOP"


class infoDAT(DAT):
    """Its text is the information of the operator its ``op`` parameter names: for a GLSL MAT, the last
    compile's log (td_hand.json: info_dat_glsl)."""

    OPType = "infoDAT"

    @property
    def text(self) -> str:
        target = self.stub_resolve(self.par.op.eval())
        return "\n".join(getattr(target, "stub_log", [])) if target is not None else ""


class Connector:
    """One input or output connector (``OP.inputConnectors[i]``, ``OP.outputConnectors[0]``)."""

    def __init__(self, owner: OP, index: int, is_input: bool) -> None:
        self.owner, self.index, self.isInput, self.isOutput = owner, index, is_input, not is_input
        self.connections: list[Connector] = []

    def connect(self, target: Any) -> None:
        """Wire to ``target`` (an operator: its first input; or a connector of the other kind). An input's
        connection is replaced; an output's is appended."""
        if isinstance(target, OP):
            if self.isInput:
                target = target.outputConnectors[0]
            elif not target.inputConnectors:
                raise ValueError(f"{target.path} has no inputs")
            else:
                target = target.inputConnectors[0]
        if not isinstance(target, Connector) or target.isInput == self.isInput:
            raise TypeError("connect() needs an operator or a connector of the other kind")
        source, sink = (target, self) if self.isInput else (self, target)
        for old in sink.connections:
            old.connections.remove(sink)
        sink.connections = [source]
        source.connections.append(sink)


_PARENT_SHORTCUT_OP = re.compile(r"parent\.(\w+)\.op\('(\w+)'\)")


def _evaluate(owner: OP, expression: str) -> Any:
    """The one expression form DepthFusion uses: ``parent.Shortcut.op('name')``."""
    match = _PARENT_SHORTCUT_OP.fullmatch(expression)
    if match is None:
        raise NotImplementedError(f"the td stand-in evaluates only parent.Shortcut.op('name'), not {expression!r}")
    shortcut, name = match.groups()
    node = owner._parent
    while node is not None and node.par.parentshortcut.eval() != shortcut:
        node = node._parent
    if node is None:
        raise RuntimeError(f"no parent of {owner.path} has the shortcut {shortcut!r}")
    return node.op(name)


def make_root(build: str | None = None, project: bool = True) -> COMP:
    """A fresh project: '/project1' to build into (or, with ``project`` False, only the root, which is
    returned), a new frame loop, the given build (default the newest), ``op.TDResources`` on its own time."""
    global _world
    _world = _World()
    simulate_build(build or SUPPORTED_BUILDS[-1])
    _world.root = baseCOMP("", None)
    _world.resources = _world.root.create(baseCOMP, "sys").create(baseCOMP, "TDResources")
    return _world.root.create(baseCOMP, "project1") if project else _world.root

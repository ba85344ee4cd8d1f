"""A strict stand-in for TouchDesigner's ``td`` module, for running DepthFusion's component code
outside TouchDesigner.

Only what DepthFusion uses is here, with the names and signatures of Derivative's documentation
(Par, ParGroup, Page, OP, COMP, DAT, Connector and Sequence classes; the Script, Render, Render
Select, Projection, Layout and Out TOPs, the Execute, Parameter Execute, Text and OSC In DATs,
the Sphere SOP, the GLSL MAT, and the Base, Geometry and Camera COMPs). It is strict on purpose:
a parameter or member that TouchDesigner does not have raises AttributeError, a menu entry it
does not list or a custom parameter name it would refuse raises ValueError, and
``copyNumpyArray`` checks what the documentation allows (shape (h, w, 1-4); uint8, uint16 or
float32; inside ``onCook`` only). Parameter Execute DATs run ``onPulse`` / ``onValueChange``
for the parameters they watch.

What is *not* modelled: cooking and rendering, expressions other than
``parent.Shortcut.op('name')``, the GPU, and every operator and parameter DepthFusion does not
touch.
"""

from __future__ import annotations

import enum
import fnmatch
import re
import types
from typing import Any

import numpy as np

CUSTOM_NAME = re.compile(r"[A-Z][a-z0-9]*")


class ParMode(enum.Enum):
    CONSTANT = 0
    EXPRESSION = 1
    EXPORT = 2
    BIND = 3


class Par:
    """One parameter. Members: the documented ones DepthFusion reads or writes."""

    __slots__ = ("owner", "name", "style", "isCustom", "_val", "_expr", "_mode", "_label", "_help", "_default",
                 "_min", "_max", "_clampMin", "_clampMax", "_normMin", "_normMax", "_menuNames", "_menuLabels",
                 "_readOnly", "_enable", "_page", "_pulses")

    def __init__(self, owner: OP, name: str, style: str, *, custom: bool, default: Any = None, page: Page | None = None,
                 menu: list[str] | None = None) -> None:
        self.owner, self.name, self.style, self.isCustom = owner, name, style, custom
        self._default = default
        self._val = default
        self._expr, self._mode = "", ParMode.CONSTANT
        self._label, self._help = name, ""
        self._min = self._max = self._normMin = self._normMax = None
        self._clampMin = self._clampMax = False
        self._menuNames = list(menu) if menu is not None else ([] if style in ("Menu", "StrMenu") else None)
        self._menuLabels = list(self._menuNames) if self._menuNames is not None else None
        self._readOnly, self._enable, self._page, self._pulses = False, True, page, 0

    # values
    @property
    def val(self) -> Any:
        return self._val

    @val.setter
    def val(self, value: Any) -> None:
        if self.style == "Pulse":
            raise TypeError(f"{self.name} is a pulse parameter: use .pulse()")
        previous = self._val
        self._val, self._mode = self._coerce(value), ParMode.CONSTANT
        if self._val != previous:
            for dat in _watchers(self, "valuechange"):
                dat.module.onValueChange(self, previous)

    def _coerce(self, value: Any) -> Any:
        if self.style == "Menu":
            if isinstance(value, int) and not isinstance(value, bool):
                value = self._menuNames[value]
            if value not in self._menuNames:
                raise ValueError(f"{self.name}: {value!r} is not one of the menu names {self._menuNames}")
            return value
        if self.style == "Toggle":
            return bool(value)
        if self.style == "Int":
            return int(value)
        if self.style == "Float":
            return float(value)
        if self.style in ("Str", "StrMenu", "Header", "Folder", "TOP", "DAT", "OP", "COMP", "MAT", "SOP", "CHOP",
                          "Python"):
            return value if not isinstance(value, (str, int, float, bool)) else str(value)
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
        """Pulse it; Parameter Execute DATs watching it run ``onPulse(par)``."""
        self._pulses += 1
        for dat in _watchers(self, "onpulse"):
            dat.module.onPulse(self)

    # custom-parameter attributes ("Can only be set on Custom Parameters")
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
    def help(self) -> str:  # documented read-only on Par; set it through the ParGroup
        return self._help

    @property
    def page(self) -> Page | None:
        return self._page

    @property
    def isPulse(self) -> bool:
        return self.style == "Pulse"

    @property
    def isMenu(self) -> bool:
        return self.style in ("Menu", "StrMenu")

    def __repr__(self) -> str:
        return f"<Par {self.owner.path}:{self.name}={self._val!r}>"


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
    """``op.par``: attribute or item access by exact name; anything else is an error."""

    def __init__(self, owner: OP) -> None:
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_pars", {})

    def _add(self, par: Par) -> None:
        self._pars[par.name] = par

    def __getattr__(self, name: str) -> Par:
        try:
            return self._pars[name]
        except KeyError:
            raise AttributeError(f"{self._owner.OPType} {self._owner.path} has no parameter {name!r}") from None

    def __getitem__(self, name: str) -> Par:
        return self.__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__getattr__(name).val = value  # `op.par.x = 5` sets the constant value

    def __contains__(self, name: str) -> bool:
        return name in self._pars


class Page:
    """A custom parameter page (``COMP.appendCustomPage``)."""

    def __init__(self, owner: COMP, name: str, index: int) -> None:
        self.owner, self.name, self.index, self.isCustom = owner, name, index, True
        self.parGroups: list[ParGroup] = []

    @property
    def pars(self) -> list[Par]:
        return [par for group in self.parGroups for par in group]

    def _append(self, name: str, style: str, label: str | None, order: Any, replace: bool, size: int = 1,
                default: Any = None) -> ParGroup:
        if not isinstance(name, str) or not CUSTOM_NAME.fullmatch(name):
            raise ValueError(f"invalid custom parameter name {name!r}: a capital letter, then lowercase letters "
                             "and digits")
        names = [name] if size == 1 else [f"{name}{i}" for i in range(1, size + 1)]
        for existing in names:
            if existing in self.owner.par._pars and not replace:
                raise ValueError(f"parameter {existing} already exists")
        pars = [Par(self.owner, n, style, custom=True, default=default, page=self) for n in names]
        group = ParGroup(name, pars)
        group.label = label if label is not None else name
        self.parGroups.append(group)
        for par in pars:
            self.owner.par._add(par)
        return group

    def appendFloat(self, name, label=None, size=1, order=None, replace=True) -> ParGroup:
        return self._append(name, "Float", label, order, replace, size, 0.0)

    def appendInt(self, name, label=None, size=1, order=None, replace=True) -> ParGroup:
        return self._append(name, "Int", label, order, replace, size, 0)

    def appendStr(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Str", label, order, replace, default="")

    def appendStrMenu(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "StrMenu", label, order, replace, default="")

    def appendMenu(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Menu", label, order, replace, default="")

    def appendToggle(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Toggle", label, order, replace, default=False)

    def appendPulse(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Pulse", label, order, replace)

    def appendFolder(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Folder", label, order, replace, default="")

    def appendHeader(self, name, label=None, order=None, replace=True) -> ParGroup:
        return self._append(name, "Header", label, order, replace, default="")


# ------------------------------------------------------------------ operators


class OP:
    """Common operator behaviour. ``BUILTIN`` lists the operator's own parameters (name → style)."""

    OPType = "OP"
    BUILTIN: dict[str, str] = {}
    MENUS: dict[str, list[str]] = {}

    INPUTS = 0  # input connectors
    SEQUENCES: dict[str, dict[str, str]] = {}  # sequence name → block parameter suffix → style

    def __init__(self, name: str, parent: COMP | None) -> None:
        self.name, self._parent = name, parent
        self.par = ParCollection(self)
        self.nodeX = self.nodeY = 0
        self.totalCooks = 0
        for par_name, style in self.BUILTIN.items():
            self._add_builtin(par_name, style)
        self.inputConnectors = [Connector(self, i, True) for i in range(self.INPUTS)]
        self.outputConnectors = [Connector(self, 0, False)]
        self.seq = types.SimpleNamespace(**{n: Sequence(self, n, b) for n, b in self.SEQUENCES.items()})

    def _add_builtin(self, par_name: str, style: str, menu_key: str | None = None) -> None:
        menu = self.MENUS.get(menu_key or par_name)
        default = menu[0] if menu else {"Toggle": False, "Float": 0.0, "Int": 0, "Str": ""}.get(style)
        self.par._add(Par(self, par_name, style, custom=False, default=default, menu=menu))

    @property
    def inputs(self) -> list[OP]:
        """The operators wired into this one, in input order."""
        return [c.connections[0].owner for c in self.inputConnectors if c.connections]

    def destroy(self) -> None:
        del self._parent._children[self.name]

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
        self.totalCooks += 1

    def _initialize(self) -> None:
        """Default contents a new operator gets (a Geometry COMP's torus)."""

    def _resolve(self, path: Any) -> OP | None:
        """An OP parameter's value as TouchDesigner reads it from this operator: a name is a sibling,
        '..' the component this operator sits in."""
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
    BUILTIN: dict[str, str] = {}

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
        """The DAT's text run as a module (TouchDesigner's ``op('x').module``); ``me`` is the DAT."""
        if self._module is None:
            module = types.ModuleType(self.name)
            module.__dict__.update(me=self, parent=lambda n=1: self.parent(n), op=self._parent.op)
            exec(compile(self._text, self.path, "exec"), module.__dict__)
            self._module = module
        return self._module


class textDAT(DAT):
    OPType = "textDAT"
    BUILTIN = {"file": "File", "syncfile": "Toggle", "language": "Menu"}
    MENUS = {"language": ["python", "glsl", "text"]}


class executeDAT(DAT):
    """Runs ``onFrameStart(frame)`` etc. from its text when the matching toggle is on."""

    OPType = "executeDAT"
    BUILTIN = {"active": "Toggle", "start": "Toggle", "create": "Toggle", "exit": "Toggle", "framestart": "Toggle",
               "frameend": "Toggle"}

    def simulate_frame_start(self, frame: int) -> None:
        """The stand-in's clock: TouchDesigner calls onFrameStart(frame) at each frame start."""
        if self.par.active.eval() and self.par.framestart.eval():
            self.module.onFrameStart(frame)


class parameterexecuteDAT(DAT):
    """Calls ``onPulse(par)`` / ``onValueChange(par, prev)`` for the parameters it watches."""

    OPType = "parameterexecuteDAT"
    BUILTIN = {"active": "Toggle", "op": "OP", "pars": "Str", "custom": "Toggle", "builtin": "Toggle",
               "valuechange": "Toggle", "onpulse": "Toggle"}


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
            target = dat._resolve(dat.par.op.eval())
            names = str(dat.par.pars.eval() or "*").split()
            kind_on = dat.par.custom.eval() if par.isCustom else dat.par.builtin.eval()
            if target is owner and kind_on and any(fnmatch.fnmatchcase(par.name, n) for n in names):
                found.append(dat)
    return found


class scriptTOP(OP):
    OPType = "scriptTOP"
    BUILTIN = {"callbacks": "DAT", "setuppars": "Pulse", "modoutsidecook": "Toggle"}

    def __init__(self, name: str, parent: COMP | None) -> None:
        super().__init__(name, parent)
        self._cooking = False
        self.image: np.ndarray | None = None  # what copyNumpyArray last received (the texture, here)

    def cook(self, force: bool = False, recurse: bool = False, includeUtility: bool = False) -> None:
        super().cook(force=force, recurse=recurse, includeUtility=includeUtility)
        callbacks = self.par.callbacks.eval()
        dat = self._resolve(callbacks)
        if dat is None:
            raise RuntimeError(f"{self.path}: callbacks DAT {callbacks!r} not found")
        self._cooking = True
        try:
            dat.module.onCook(self)
        finally:
            self._cooking = False

    def copyNumpyArray(self, numpyArray: np.ndarray) -> None:
        if not self._cooking and not self.par.modoutsidecook.eval():
            raise RuntimeError("copyNumpyArray outside onCook (turn on Modify Outside of Cook)")
        array = numpyArray
        if not isinstance(array, np.ndarray) or array.ndim != 3 or not 1 <= array.shape[2] <= 4:
            raise ValueError(f"copyNumpyArray needs shape (h, w, 1-4), got {getattr(array, 'shape', type(array))}")
        if array.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f"copyNumpyArray needs uint8, uint16 or float32, got {array.dtype}")
        self.image = array.copy()


class COMP(OP):
    OPType = "COMP"
    BUILTIN = {"extension1": "Python", "extname1": "Str", "promoteextension1": "Toggle",
               "reinitextensions": "Pulse", "parentshortcut": "Str"}

    def __init__(self, name: str, parent: COMP | None) -> None:
        super().__init__(name, parent)
        self._children: dict[str, OP] = {}
        self.customPages: list[Page] = []
        self.ext = types.SimpleNamespace()

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

    def create(self, OPtype: type, name: str | None = None, initialize: bool = True) -> OP:
        if not (isinstance(OPtype, type) and issubclass(OPtype, OP)) or OPtype in (OP, DAT, COMP):
            raise TypeError(f"create() needs an operator type such as textDAT, got {OPtype!r}")
        name = name or f"{OPtype.OPType}{len(self._children) + 1}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in self._children:
            raise ValueError(f"bad or duplicate operator name {name!r} in {self.path}")
        node = OPtype(name, self)
        self._children[name] = node
        if initialize:
            node._initialize()
        return node

    def op(self, path: Any) -> OP | None:
        if isinstance(path, OP):
            return path
        node: OP | None = self
        for part in str(path).strip("/").split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                node = node._parent
            else:
                node = node._children.get(part) if isinstance(node, COMP) else None
            if node is None:
                return None
        return node

    def initializeExtensions(self) -> list[Any]:
        """Run ``extension1`` (as TouchDesigner would) and promote it when asked."""
        source = self.par.extension1.eval()
        if not source:
            return []
        ext_dat_name = re.fullmatch(r"op\('\./?(\w+)'\)\.module\.(\w+)\(me\)", source)
        if ext_dat_name is None:
            raise NotImplementedError(f"the td stand-in runs extension1 only as op('./DAT').module.Class(me): {source}")
        dat, cls = ext_dat_name.groups()
        extension = getattr(self.op(dat).module, cls)(self)
        setattr(self.ext, cls, extension)
        if self.par.promoteextension1.eval():
            for attribute in dir(extension):
                if attribute[:1].isupper():
                    setattr(self, attribute, getattr(extension, attribute))
        return [extension]

    def save(self, filepath: str, createFolders: bool = False) -> str:
        raise NotImplementedError("only TouchDesigner writes .tox files")


class baseCOMP(COMP):
    OPType = "baseCOMP"


# ------------------------------------------------------------------ the render network's operators
# Parameter names and menu entries from Derivative's pages for each operator; only those
# DepthFusion sets. Parameters that are tuples in TouchDesigner (Translate, Window X/Y, IPD
# Shift, Resolution) appear as their parts (tx, winx, ipdshiftx, resolutionw …).


def _parts(name: str, letters: str = "xyz", style: str = "Float") -> dict[str, str]:
    return {name + letter: style for letter in letters}


TOP_COMMON = {"outputresolution": "Menu", **_parts("resolution", "wh", "Int")}
TOP_MENUS = {"outputresolution": ["useinput", "eighth", "quarter", "half", "2x", "4x", "8x", "fit", "limit",
                                  "custom"]}
XFORM = {"xord": "Menu", "rord": "Menu", **_parts("t"), **_parts("r"), **_parts("s")}
XFORM_MENUS = {"xord": ["srt", "str", "rst", "rts", "tsr", "trs"], "rord": ["xyz", "xzy", "yxz", "yzx", "zxy", "zyx"]}


class SOP(OP):
    """SOPs carry the display and render flags (``SOP.display``, ``SOP.render``)."""

    def __init__(self, name: str, parent: COMP | None) -> None:
        super().__init__(name, parent)
        self.display = self.render = False


class sphereSOP(SOP):
    OPType = "sphereSOP"
    BUILTIN = {"type": "Menu", "surftype": "Menu", **_parts("rad"), **_parts("t"), "orient": "Menu", "rows": "Int",
               "cols": "Int", "upole": "Toggle", "texture": "Menu", "normals": "Toggle"}
    MENUS = {"type": ["prim", "poly", "mesh", "nurbs", "bezier"],
             "surftype": ["rows", "cols", "rowcol", "triangles", "quads", "alttriangles"], "orient": ["x", "y", "z"],
             "texture": ["off", "byprimtype", "equirectangularin", "equirectangularout", "equiazimuth",
                         "equiazimuth360"]}


class torusSOP(SOP):
    OPType = "torusSOP"


class geometryCOMP(COMP):
    """A new Geometry COMP holds a Torus SOP (as in TouchDesigner's network editor)."""

    OPType = "geometryCOMP"
    BUILTIN = {**COMP.BUILTIN, **XFORM, "material": "MAT", "render": "Toggle"}
    MENUS = XFORM_MENUS

    def _initialize(self) -> None:
        torus = self.create(torusSOP, "torus1")
        torus.display = torus.render = True


class cameraCOMP(COMP):
    OPType = "cameraCOMP"
    BUILTIN = {**COMP.BUILTIN, **XFORM, "projection": "Menu", "viewanglemethod": "Menu", "fov": "Float",
               "near": "Float", "far": "Float", **_parts("win", "xy"), **_parts("ipdshift"),
               **_parts("bgcolor", "rgba")}
    MENUS = {**XFORM_MENUS, "projection": ["perspective", "ortho", "persporthoblend", "custommatrix"],
             "viewanglemethod": ["horzfov", "vertfov", "focalaperture"]}


class MAT(OP):
    pass


EXTEND = ["hold", "zero", "repeat", "mirror"]


class glslMAT(MAT):
    OPType = "glslMAT"
    BUILTIN = {"glslversion": "Menu", "vdat": "DAT", "pdat": "DAT"}
    MENUS = {"glslversion": ["glsl120", "glsl330", "glsl400", "glsl410", "glsl420", "glsl430", "glsl440", "glsl450",
                             "glsl460"],
             "samplerextendu": EXTEND, "samplerextendv": EXTEND,
             "samplerfilter": ["nearest", "linear", "mipmaplinear"]}
    SEQUENCES = {"sampler": {"name": "Str", "top": "TOP", "extendu": "Menu", "extendv": "Menu", "filter": "Menu"},
                 "vec": {"name": "Str", **_parts("value", "xyzw")}}


class TOP(OP):
    INPUTS = 1
    BUILTIN = TOP_COMMON
    MENUS = TOP_MENUS


class renderTOP(TOP):
    OPType = "renderTOP"
    INPUTS = 0
    BUILTIN = {"camera": "OP", "geometry": "OP", "lights": "OP", "rendermode": "Menu", "cullface": "Menu",
               "antialias": "Menu", **TOP_COMMON}
    MENUS = {**TOP_MENUS, "rendermode": ["render2d", "cubemap", "fisheye180", "dualparaboloid", "uvunwrap",
                                         "cubemapods"],
             "cullface": ["neither", "backfaces", "frontfaces", "bothfaces"],
             "antialias": ["aa1", "aa2", "aa4", "aa8mid", "aa8high", "aa16low", "aa16mid", "aa16high", "aa32"]}


class renderselectTOP(TOP):
    OPType = "renderselectTOP"
    INPUTS = 0
    BUILTIN = {"top": "TOP", "colorbufindex": "Int", "cameraindex": "Int", **TOP_COMMON}


class projectionTOP(TOP):
    OPType = "projectionTOP"
    BUILTIN = {"input": "Menu", "output": "Menu", "fov": "Float", **_parts("r"), **TOP_COMMON}
    MENUS = {**TOP_MENUS, "input": ["cubemap", "equirectangular", "fisheye", "dualparaboloid"],
             "output": ["cubemap", "equirectangular", "fisheye"]}


class layoutTOP(TOP):
    OPType = "layoutTOP"
    INPUTS = 0
    BUILTIN = {"top": "Str", "scaleres": "Toggle", "align": "Menu", "fit": "Menu", **TOP_COMMON}
    MENUS = {**TOP_MENUS, "align": ["none", "horizlr", "horizrl", "verttb", "vertbt", "gridrows", "gridcols"],
             "fit": ["fill", "fithorz", "fitvert", "fitbest", "fitoutside", "nativeres"]}


class outTOP(TOP):
    OPType = "outTOP"
    BUILTIN = {}


class oscinDAT(DAT):
    """Runs its callbacks DAT's ``onReceiveOSC`` for each message while Active is on."""

    OPType = "oscinDAT"
    BUILTIN = {"active": "Toggle", "protocol": "Menu", "port": "Int", "localaddress": "Str", "callbacks": "DAT"}
    MENUS = {"protocol": ["msging", "multicastmsging", "reliablemsging"]}

    def simulate_receive(self, address: str, args: list[Any]) -> bool:
        """A message arriving at the port: True when the callback ran."""
        if not self.par.active.eval():
            return False
        dat = self._resolve(self.par.callbacks.eval())
        message = " ".join([address, *map(str, args)])
        dat.module.onReceiveOSC(self, 0, message, message.encode(), 0.0, address, list(args), None)
        return True


# ------------------------------------------------------------------ wiring, sequences, expressions


class Connector:
    """One input or output connector (``OP.inputConnectors[i]``, ``OP.outputConnectors[0]``)."""

    def __init__(self, owner: OP, index: int, is_input: bool) -> None:
        self.owner, self.index, self.isInput, self.isOutput = owner, index, is_input, not is_input
        self.connections: list[Connector] = []

    def connect(self, target: Any) -> None:
        """Wire to ``target``: a connector of the other kind, or an operator (its first free input)."""
        if isinstance(target, OP):
            free = [c for c in target.inputConnectors if not c.connections]
            if self.isInput or not free:
                raise ValueError(f"{target.path} has no free input for {self.owner.path}")
            target = free[0]
        if not isinstance(target, Connector) or target.isInput == self.isInput:
            raise TypeError("connect() needs an operator or a connector of the other kind")
        source, sink = (target, self) if self.isInput else (self, target)
        if sink.connections:
            raise ValueError(f"input {sink.index} of {sink.owner.path} is already wired")
        source.connections.append(sink)
        sink.connections.append(source)


class Sequence:
    """A parameter sequence (``op.seq.vec``): ``numBlocks`` blocks of ``name{i}{suffix}`` parameters."""

    def __init__(self, owner: OP, name: str, block: dict[str, str]) -> None:
        self.owner, self.name, self._block, self._blocks = owner, name, block, 0

    @property
    def numBlocks(self) -> int:
        return self._blocks

    @numBlocks.setter
    def numBlocks(self, count: int) -> None:
        if count < self._blocks:
            raise NotImplementedError("the td stand-in only grows sequences")
        for index in range(self._blocks, count):
            for suffix, style in self._block.items():
                self.owner._add_builtin(f"{self.name}{index}{suffix}", style, f"{self.name}{suffix}")
        self._blocks = count


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


def make_root() -> baseCOMP:
    """A fresh '/project1'-like component to build into."""
    root = baseCOMP("", None)
    return root.create(baseCOMP, "project1")

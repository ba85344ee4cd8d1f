"""Build the DepthFusion component inside TouchDesigner from the files in this folder.

In TouchDesigner's Textport (Alt+T):

    import sys; sys.path.insert(0, r'C:/path/to/depthfusion/touchdesigner')
    import build_depthfusion; build_depthfusion.main()

builds ``/project1/DepthFusion`` and saves ``DepthFusion.tox`` next to this file. The same
``build(td, parent, folder)`` runs in the tests against a stand-in for TouchDesigner's ``td``
module (tests/tdstub/td.py), which checks operator types, parameter names and signatures.

Built so far: custom parameters (parameters.py), the extension, the callbacks DATs, the frame
Script TOPs ``rgb`` and ``depth``, and td_bridge embedded as Text DATs so the .tox works without
td_bridge installed. Not yet: the sphere, GLSL MAT and stereo render network.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COMPONENT = "DepthFusion"
PULSES = "Connect Disconnect Generate Cancel Recall"


def _dat(parent: Any, kind: type, name: str, text: str, x: int, y: int) -> Any:
    dat = parent.create(kind, name)
    dat.text = text
    dat.nodeX, dat.nodeY = x, y
    return dat


def build(td: Any, parent: Any, folder: Path) -> Any:
    """Create ``parent/DepthFusion`` from ``folder`` (this touchdesigner/ folder) and return it."""
    folder = Path(folder)
    repo = folder.parent
    if str(repo) not in sys.path:  # parameters.py imports td_bridge's schema
        sys.path.insert(0, str(repo))
    sys.path.insert(0, str(folder))
    try:
        from parameters import create_parameters
    finally:
        sys.path.remove(str(folder))

    comp = parent.create(td.baseCOMP, COMPONENT)
    create_parameters(comp)

    bridge = comp.create(td.baseCOMP, "td_bridge")  # the package, for a .tox without td_bridge installed
    bridge.nodeX, bridge.nodeY = -400, -200
    for index, source in enumerate(sorted((repo / "td_bridge").glob("*.py"))):
        _dat(bridge, td.textDAT, source.stem, source.read_text(encoding="utf-8"), 0, -120 * index)

    def read(name: str) -> str:
        return (folder / name).read_text(encoding="utf-8")

    _dat(comp, td.textDAT, "DepthFusionExt", read("DepthFusionExt.py"), -400, 0)
    for row, name in enumerate(("rgb", "depth")):
        script = _dat(comp, td.textDAT, f"{name}_top", read(f"callbacks/{name}_top.py"), 0, -150 * row)
        top = comp.create(td.scriptTOP, name)
        top.par.callbacks = script.name
        top.nodeX, top.nodeY = 200, -150 * row

    execute = _dat(comp, td.executeDAT, "frames", read("callbacks/execute.py"), -200, -300)
    execute.par.framestart = True
    execute.par.active = True
    pulses = _dat(comp, td.parameterexecuteDAT, "pulses", read("callbacks/parexec.py"), 0, -300)
    pulses.par.op = ".."
    pulses.par.custom = True
    pulses.par.onpulse = True
    pulses.par.pars = PULSES
    pulses.par.active = True

    comp.par.extension1 = "op('./DepthFusionExt').module.DepthFusionExt(me)"
    comp.par.promoteextension1 = True
    comp.initializeExtensions()
    return comp


def main(folder: Path = HERE) -> Any:
    """Inside TouchDesigner: build into /project1 and save DepthFusion.tox beside this file."""
    import td  # TouchDesigner's own module; not importable elsewhere

    comp = build(td, td.op("/project1"), folder)
    target = comp.save(str(folder / "DepthFusion.tox"), createFolders=True)
    print(f"saved {target}")
    return comp

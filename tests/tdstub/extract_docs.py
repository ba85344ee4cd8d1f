"""Extract the facts the td stand-in is built from out of a markdown mirror of Derivative's docs.

    python tests/tdstub/extract_docs.py MIRROR_GIT_DIR [--commit REV] [-o tests/tdstub/td_docs.json]

MIRROR_GIT_DIR is a git directory (or work tree) of a mirror of docs.derivative.ca in markdown with one
page per file, such as the public repository ``cacheflowe/td-docs-mcp`` (folder ``td_docs/``). For each
operator type DepthFusion creates or touches, the operator page gives its parameters (name, label, page,
tuple parts, menu entries) and parameter sequences (block parameters); for each Python class it uses, the
class page gives its documented members and methods. The result, with the mirror's commit and date, is
the committed ``td_docs.json`` that ``td.py`` loads; the stand-in knows no name outside it (plus the
hand-added entries of ``td_hand.json``, each with its source).

Page format read here: ``- Label `name` - …`` starts a parameter under ``## Parameters - <Page> Page``;
indented ``  * Label `entry` -`` lines are its tuple parts (every entry is the name plus a one- or
two-character suffix: ``t`` → ``tx ty tz``) or else its menu entries; a parameter ``seq`` followed by
``seq0…`` parameters is a sequence whose blocks repeat those. Class pages list members as
``` `name` → `Type` ``` and methods as ``` `name(args)`→ `Type` ```.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

FOLDER = "td_docs"
# stand-in operator type → the mirror's operator page
OPERATOR_PAGES = {
    "baseCOMP": "COMPs/Base_COMP.md", "geometryCOMP": "COMPs/Geometry_COMP.md",
    "cameraCOMP": "COMPs/Camera_COMP.md", "textDAT": "DATs/Text_DAT.md", "executeDAT": "DATs/Execute_DAT.md",
    "parameterexecuteDAT": "DATs/Parameter_Execute_DAT.md", "oscinDAT": "DATs/OSC_In_DAT.md",
    "scriptTOP": "TOPs/Script_TOP.md", "renderTOP": "TOPs/Render_TOP.md",
    "renderselectTOP": "TOPs/Render_Select_TOP.md", "projectionTOP": "TOPs/Projection_TOP.md",
    "layoutTOP": "TOPs/Layout_TOP.md", "outTOP": "TOPs/Out_TOP.md", "sphereSOP": "SOPs/Sphere_SOP.md",
    "torusSOP": "SOPs/Torus_SOP.md", "glslMAT": "MATs/GLSL_MAT.md", "infoDAT": "DATs/Info_DAT.md",
    "flipTOP": "TOPs/Flip_TOP.md",
}
# Python class → its class page (operator class pages include their base classes' sections)
CLASS_PAGES = {
    "Par": "Python/Par_Class.md", "ParCollection": "Python/ParCollection_Class.md",
    "ParGroup": "Python/ParGroup_Class.md", "Page": "Python/Page_Class.md",
    "Connector": "Python/Connector_Class.md", "Sequence": "Python/Sequence_Class.md",
    "SequenceBlock": "Python/SequenceBlock_Class.md", "App": "Python/App_Class.md",
    "AbsTime": "Python/AbsTime_Class.md",
    "OP": "Python/OP_Class.md", "COMP": "Python/COMP_Class.md", "DAT": "Python/DAT_Class.md",
    "TOP": "Python/TOP_Class.md", "SOP": "Python/SOP_Class.md", "MAT": "Python/MAT_Class.md",
    "baseCOMP": "COMPs/BaseCOMP_Class.md", "geometryCOMP": "COMPs/GeometryCOMP_Class.md",
    "cameraCOMP": "COMPs/CameraCOMP_Class.md", "textDAT": "DATs/TextDAT_Class.md",
    "executeDAT": "DATs/ExecuteDAT_Class.md", "parameterexecuteDAT": "DATs/ParameterexecuteDAT_Class.md",
    "oscinDAT": "DATs/OscinDAT_Class.md", "scriptTOP": "TOPs/ScriptTOP_Class.md",
    "renderTOP": "TOPs/RenderTOP_Class.md", "renderselectTOP": "TOPs/RenderselectTOP_Class.md",
    "projectionTOP": "TOPs/ProjectionTOP_Class.md", "layoutTOP": "TOPs/LayoutTOP_Class.md",
    "outTOP": "TOPs/OutTOP_Class.md", "sphereSOP": "SOPs/SphereSOP_Class.md", "torusSOP": "SOPs/TorusSOP_Class.md",
    "glslMAT": "MATs/GlslMAT_Class.md", "infoDAT": "DATs/InfoDAT_Class.md", "flipTOP": "TOPs/FlipTOP_Class.md",
}

PAGE_HEADING = re.compile(r"^## Parameters - (.*?) ?Page\s*$")
# "- Label `name` - …"; a few pages lost the bullet ("Cull Face `cullface` - …", "# of Color Buffers `…` - …")
PARAMETER = re.compile(r"^(?:- )?(?![\s*])([^`]{1,80}?) `([A-Za-z][A-Za-z0-9]*)`(?: - |$| -$)")
ENTRY = re.compile(r"^\s+\* (.*?) `([^`]+)`")
MEMBER = re.compile(r"^`([A-Za-z_][A-Za-z0-9_]*)` → `([^`]*)`(.*)")
METHOD = re.compile(r"^`(?:\*\*)?([A-Za-z_][A-Za-z0-9_]*)\(([^`]*)\)(?:\*\*)?`\s*→")
CALLBACK = re.compile(r"^def (\w+)\(([^)]*)\):")


def _is_parts(name: str, entries: list[str]) -> bool:
    return bool(entries) and all(e.startswith(name) and 1 <= len(e) - len(name) <= 2 for e in entries)


def parse_operator(text: str) -> dict:
    """{"parameters": {name: {label, page, group?, menu?}}, "sequences": {seq: {suffix: {...}}}}."""
    parameters: dict[str, dict] = {}
    page, current, entries = None, None, []

    def finish() -> None:
        if current is None:
            return
        name, info = current
        if _is_parts(name, [e for _, e in entries]):
            for label, part in entries:
                parameters[part] = {"label": label.strip() or part, "page": info["page"], "group": name}
        else:
            if entries:
                info["menu"] = [e for _, e in entries]
            parameters[name] = info

    for line in text.splitlines():
        heading = PAGE_HEADING.match(line)
        match = PARAMETER.match(line) if page is not None and not heading else None
        if heading or (line.startswith("## ") and match is None):
            finish()
            current, entries = None, []
            page = heading.group(1) if heading else None
            continue
        if page is None:
            continue
        if match:
            finish()
            current, entries = (match.group(2), {"label": match.group(1).strip(), "page": page}), []
            continue
        entry = ENTRY.match(line)
        if entry and current is not None:
            entries.append((entry.group(1), entry.group(2)))
    finish()

    sequences: dict[str, dict] = {}
    for name in list(parameters):
        block = {n[len(name) + 1:]: parameters[n] for n in parameters if n.startswith(name + "0") and n != name}
        if block and all(suffix[:1].isalpha() for suffix in block):
            sequences[name] = {suffix: {k: v for k, v in info.items() if k != "group"} | (
                {"group": info["group"][len(name) + 1:]} if "group" in info else {}) for suffix, info in block.items()}
            for suffix in block:
                del parameters[f"{name}0{suffix}"]
    return {"parameters": parameters, "sequences": sequences}


def parse_class(text: str) -> dict:
    """{"members": {name: {"type", "readOnly"}}, "methods": {name: "args"}, "callbacks": {name: "args"}}."""
    members, methods, callbacks = {}, {}, {}
    for line in text.splitlines():
        member = MEMBER.match(line)
        if member:
            members.setdefault(member.group(1), {"type": member.group(2), "readOnly": "Read Only" in member.group(3)})
            continue
        method = METHOD.match(line)
        if method:
            methods.setdefault(method.group(1), method.group(2))
            continue
        callback = CALLBACK.match(line)
        if callback:
            callbacks.setdefault(callback.group(1), callback.group(2))
    return {"members": members, "methods": methods, "callbacks": callbacks}


class Mirror:
    """Pages of the mirror: from a git directory at ``commit``, or a plain folder."""

    def __init__(self, path: Path, commit: str) -> None:
        self.path = path
        git = ["git", "--git-dir", str(path)] if (path / "HEAD").exists() else ["git", "-C", str(path)]
        self.git = git
        self.commit = self._git("rev-parse", commit).strip()
        self.date = self._git("show", "-s", "--format=%cI", self.commit).strip()
        remote = subprocess.run([*git, "config", "--get", "remote.origin.url"], capture_output=True, text=True)
        self.remote = remote.stdout.strip()

    def _git(self, *args: str) -> str:
        return subprocess.run([*self.git, *args], capture_output=True, text=True, check=True).stdout

    def page(self, relative: str) -> tuple[str, str]:
        text = self._git("show", f"{self.commit}:{FOLDER}/{relative}")
        url = re.search(r"^url: (\S+)", text, re.M)
        return text, url.group(1) if url else ""


def extract(mirror: Mirror, repository: str) -> dict:
    data: dict = {"source": {"repository": repository, "commit": mirror.commit, "date": mirror.date,
                             "folder": FOLDER, "extracted_by": "tests/tdstub/extract_docs.py"},
                  "operators": {}, "classes": {}}
    for op_type, relative in OPERATOR_PAGES.items():
        text, url = mirror.page(relative)
        data["operators"][op_type] = {"page": relative, "url": url, **parse_operator(text)}
    for cls, relative in CLASS_PAGES.items():
        text, url = mirror.page(relative)
        data["classes"][cls] = {"page": relative, "url": url, **parse_class(text)}
    return data


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mirror", type=Path, help="git directory or work tree of the docs mirror")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--repository", default="cacheflowe/td-docs-mcp", help="the mirror's public name")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("td_docs.json"))
    args = parser.parse_args(argv)
    data = extract(Mirror(args.mirror, args.commit), args.repository)
    args.output.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    counts = {k: sum(len(v["parameters"]) for v in data["operators"].values()) if k == "operators" else
              sum(len(v["members"]) + len(v["methods"]) for v in data["classes"].values()) for k in ("operators",
                                                                                                     "classes")}
    print(f"wrote {args.output}: {len(data['operators'])} operator types ({counts['operators']} parameters), "
          f"{len(data['classes'])} classes ({counts['classes']} members and methods) from {args.repository} "
          f"{data['source']['commit'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

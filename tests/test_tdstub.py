"""The td stand-in is only as good as its sources: it must know nothing the documentation data does not,
and the extractor must read Derivative's page format correctly."""

import inspect
import json
import re
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "tdstub"))
import extract_docs  # noqa: E402
import td  # noqa: E402

STAND_IN_ONLY = re.compile(r"_|stub_|simulate_")
HAND_ADDED = {"OPType": "COMP Class create(): 'these can be accessed via type(n) and n.OPType'"}


def documented(class_name):
    entry = td.DOCS["classes"][class_name]
    return set(entry["members"]) | set(entry["methods"])


def test_the_documentation_data_records_its_source():
    source = td.DOCS["source"]
    assert source["repository"] == "cacheflowe/td-docs-mcp" and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["date"].startswith("2026-02-13") and source["extracted_by"] == "tests/tdstub/extract_docs.py"
    assert set(td.DOCS["operators"]) == set(extract_docs.OPERATOR_PAGES)
    for entry in td.HAND["behaviours"].values():
        assert entry["source"], entry


@pytest.mark.parametrize("name", sorted(name for name in extract_docs.CLASS_PAGES if hasattr(td, name)))
def test_the_stand_in_defines_only_documented_members(name):
    cls = getattr(td, name)
    ours = {attribute for attribute in dir(cls) if not STAND_IN_ONLY.match(attribute)}
    if issubclass(cls, list):
        ours -= set(dir(list))
    undocumented = ours - documented(name) - set(HAND_ADDED)
    assert not undocumented, f"{name}: {sorted(undocumented)} are not on its class page"


def test_instances_add_no_undocumented_attributes():
    root = td.make_root()
    comp = root.create(td.geometryCOMP, "geo")
    page = comp.appendCustomPage("Test")
    samples = {"geometryCOMP": comp, "Par": page.appendFloat("Value")[0], "Page": page,
               "Connector": comp.outputConnectors[0], "ParCollection": comp.par, "App": td.app,
               "scriptTOP": root.create(td.scriptTOP, "s"), "textDAT": root.create(td.textDAT, "t")}
    for name, instance in samples.items():
        ours = {a for a in vars(instance) if not STAND_IN_ONLY.match(a)}
        assert ours <= documented(name), (name, ours - documented(name))


def test_the_td_module_members_are_documented():
    public = {name for name, value in vars(td).items()
              if not STAND_IN_ONLY.match(name) and not name.isupper() and not inspect.ismodule(value)
              and not (inspect.isclass(value) and (name in extract_docs.CLASS_PAGES or issubclass(value, td.OP)))}
    stand_in_api = {"make_root", "annotations", "Any", "Path", "ParMode", "ParGroup", "SequenceCollection"}
    assert public - stand_in_api <= set(td.HAND["td_module"]["members"])


def test_unknown_names_behave_as_in_touchdesigner():
    camera = td.make_root().create(td.cameraCOMP, "cam")
    assert camera.par["ipdshiftx"] is None  # ParCollection: "If not found None is returned"
    with pytest.raises(AttributeError, match="has no parameter 'ipdshiftx'"):
        camera.par.ipdshiftx = 0.03
    with pytest.raises(ValueError, match="not one of the menu names"):
        camera.par.viewanglemethod = "vertical"
    with pytest.raises(TypeError, match="documented operator type"):
        camera.parent().create(td.OP, "x")


def test_create_takes_the_next_numbered_name_and_connect_replaces():
    root = td.make_root()
    names = [root.create(td.baseCOMP, "DepthFusion").name for _ in range(3)]
    assert names == ["DepthFusion", "DepthFusion1", "DepthFusion2"]
    a, b, target = (root.create(td.projectionTOP, n) for n in ("a", "b", "target"))
    a.outputConnectors[0].connect(target)
    b.outputConnectors[0].connect(target)
    assert target.inputs == [b] and a.outputConnectors[0].connections == []


SAMPLE_PAGE = """---
url: https://docs.derivative.ca/Sample_TOP
---
# Sample TOP
## Summary
Text with a `backtick` - and a dash that is no parameter.
## Parameters - Render Page
- Resolution `resolution` - ⊞ - The size.
  * W `resolutionw` -
  * H `resolutionh` -

- Mode `mode` - ⊞ - Pick one.
  * Fast `modefast` - starts with the name but is a menu entry
  * Cube `cubemap` -

Cull Face `cullface` - ⊞ - A line that lost its bullet.
  * Neither `neither` -
- Sampler `sampler` - Sequence of samplers
- Name `sampler0name` - The name.
- Value `sampler0value` - ⊞ - Four values.
  * Value `sampler0valuex` -
  * Value `sampler0valuey` -
## Parameters - Page
- Rows `rows` - A page without a name.
## Info CHOP Channels
- Not a parameter `total_cooks` - ignored: after the parameter pages
"""


def test_the_extractor_reads_parts_menus_sequences_and_bulletless_lines():
    page = extract_docs.parse_operator(SAMPLE_PAGE)
    parameters = page["parameters"]
    assert parameters["resolutionw"] == {"label": "W", "page": "Render", "group": "resolution"}
    assert parameters["mode"]["menu"] == ["modefast", "cubemap"] and "modefast" not in parameters
    assert parameters["cullface"]["menu"] == ["neither"] and parameters["rows"]["page"] == ""
    assert page["sequences"] == {"sampler": {
        "name": {"label": "Name", "page": "Render"},
        "valuex": {"label": "Value", "page": "Render", "group": "value"},
        "valuey": {"label": "Value", "page": "Render", "group": "value"}}}
    assert "sampler0name" not in parameters and "total_cooks" not in parameters and "backtick" not in parameters


def test_the_extractor_reads_class_pages():
    text = ("## Members\n`owner` → `OP` **(Read Only)** :\nThe owner.\n`val` → `Any` :\n## Methods\n"
            "`eval()`→ `Any`:\n`**op(pattern)**`→`OP`\n```\ndef onCook(scriptOp):\n\treturn\n```\n")
    parsed = extract_docs.parse_class(text)
    assert parsed == {"members": {"owner": {"type": "OP", "readOnly": True}, "val": {"type": "Any",
                                                                                      "readOnly": False}},
                      "methods": {"eval": "", "op": "pattern"}, "callbacks": {"onCook": "scriptOp"}}


def test_the_committed_data_is_what_the_extractor_makes(tmp_path):
    """Only where the mirror has been fetched (tests/tdstub/README.md says how); elsewhere skipped."""
    mirror = ROOT.parent / ".mirror" / "cacheflowe+td-docs-mcp" / "repo"
    if not mirror.exists():
        pytest.skip(f"no docs mirror at {mirror}")
    output = tmp_path / "td_docs.json"
    extract_docs.main([str(mirror), "--commit", td.DOCS["source"]["commit"], "-o", str(output)])
    assert json.loads(output.read_text(encoding="utf-8")) == td.DOCS


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda page: page.appendFloat("lowercase"), "invalid custom parameter name"),
        (lambda page: page.appendFloat("Mesh_rows"), "invalid custom parameter name"),
        (lambda page: page.appendSlider("Value"), "has no attribute 'appendSlider'"),
    ],
)
def test_the_stand_in_refuses_what_touchdesigner_refuses(action, message):
    page = td.make_root().appendCustomPage("Test")
    with pytest.raises((ValueError, AttributeError), match=message):
        action(page)


def test_the_stand_in_checks_copy_numpy_array_and_keeps_the_pixel_format():
    top = td.make_root().create(td.scriptTOP, "t")
    with pytest.raises(RuntimeError, match="outside onCook"):
        top.copyNumpyArray(np.zeros((2, 2, 3), np.uint8))
    top._cooking = True
    for bad, message in ((np.zeros((2, 2), np.uint8), "shape"), (np.zeros((2, 2, 5), np.uint8), "shape"),
                         (np.zeros((2, 2, 3), np.float64), "uint8, uint16 or float32")):
        with pytest.raises(ValueError, match=message):
            top.copyNumpyArray(bad)
    depth = np.array([[[0], [100]], [[30000], [65535]]], np.uint16)
    top.copyNumpyArray(depth)
    assert top.pixelFormatName == td.BEHAVIOUR["script_top_useinput_format"]  # 'Use Input' with no input
    assert np.abs(top.numpyArray()[..., 0] * 65535 - depth[..., 0]).max() >= 69  # 8 bits: depth is lost
    top.par.format = "mono16fixed"
    np.testing.assert_array_equal(np.round(top.numpyArray()[..., 0] * 65535), depth[..., 0])
    with pytest.raises(AttributeError, match="has no parameter 'callback'"):
        top.par.callback = "x"

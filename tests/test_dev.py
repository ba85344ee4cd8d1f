"""dev.py's pinned installs: every set-up goes through the constraints files, the set-up stamp covers them, and
the files pin every dependency pyproject.toml names, at the versions this suite runs with."""

import importlib.metadata
import re
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from conftest import ROOT

sys.path.insert(0, str(ROOT))
import dev  # noqa: E402


def pins(path):
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9][\w.-]*==[\w.]+", line) for line in lines), lines  # no ranges, no +cpu
    return {normal(line.split("==")[0]): line.split("==")[1] for line in lines}


def normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def test_ensure_env_installs_through_the_constraints_and_restamps_when_they_change(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(dev, "run", commands.append)
    python = dev.venv_python(tmp_path / "env")  # an environment already there: no venv is made
    python.parent.mkdir(parents=True)
    python.touch()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("numpy==2.0.0\n")
    steps = [["torch"], ["torch", "--index-url", dev.WINDOWS_CUDA_INDEX], ["-e", "."]]
    dev.ensure_env(tmp_path / "env", steps, constraints)
    assert [c[c.index("install") + 1:] for c in commands] == [
        ["--disable-pip-version-check", "-q", "-c", str(constraints), "torch"],
        ["--disable-pip-version-check", "-q", "torch", "--index-url", dev.WINDOWS_CUDA_INDEX],
        ["--disable-pip-version-check", "-q", "-c", str(constraints), "-e", "."]]
    commands.clear()
    dev.ensure_env(tmp_path / "env", steps, constraints)
    assert commands == []  # same set-up: nothing to do
    constraints.write_text("numpy==2.0.1\n")
    dev.ensure_env(tmp_path / "env", steps, constraints)
    assert len(commands) == 3  # moved forward: installed again


@pytest.mark.parametrize("constraints, extras", [(dev.CONSTRAINTS, ("generator", "test")), (dev.TD_CONSTRAINTS, ())])
def test_constraints_pin_every_dependency_pyproject_names(constraints, extras):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    if constraints == dev.TD_CONSTRAINTS:
        wanted += dev.TD_SIDE_PACKAGES
    pinned = pins(constraints)
    missing = sorted({normal(Requirement(r).name) for r in wanted} - set(pinned))
    assert missing == [], f"{constraints.name} lacks {missing}: run `python3 dev.py lock`, then `python3 dev.py test`"
    assert pins(dev.CONSTRAINTS)["torch"] == dev.TEST_TORCH.split("==")[1]
    assert pins(dev.TD_CONSTRAINTS)["numpy"] == dev.TD_NUMPY.split("==")[1]


def test_this_suite_runs_with_the_pinned_versions():
    installed = {normal(d.metadata["Name"]): d.version.split("+")[0] for d in importlib.metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in pins(dev.CONSTRAINTS).items()
             if installed.get(name) != version}
    assert wrong == {}, "pinned vs installed; `python3 dev.py test` reinstalls through constraints.txt"

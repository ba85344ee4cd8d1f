#!/usr/bin/env python3
"""Set up and run DepthFusion on Linux, macOS and Windows (no make needed).

    python3 dev.py serve [SERVE FLAGS]   # .venv with the generator, then `python -m generator serve`
    python3 dev.py test [PYTEST FLAGS]   # .venv-test with CPU torch, then the whole test suite;
                                         # without flags also td_bridge's tests under TD's numpy
    python3 dev.py lock                  # re-resolve constraints*.txt to the newest allowed releases

Each command creates its virtual environment once and reinstalls only when pyproject.toml, the
constraints files or this file change. Every install goes through the constraints files: the
versions the suite passed with. On Windows use `py dev.py ...`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# The CPU build the tests use; project machines keep this wheel locally, so set-up stays small.
TEST_TORCH = "torch==2.13.0"
# PyPI's Windows torch wheels are CPU-only; PyTorch publishes CUDA builds on its own index.
WINDOWS_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
# The versions the suite passed with, as pip constraints (torch by version, never by build: a GPU machine
# still gets its CUDA build). Written by `dev.py lock`, never by hand.
CONSTRAINTS = ROOT / "constraints.txt"  # .venv-test and .venv
TD_CONSTRAINTS = ROOT / "constraints-td.txt"  # .venv-td


def venv_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def serve_torch() -> list[str]:
    """pip arguments for the torch build that suits this machine."""
    system = platform.system()
    if system == "Darwin":
        return ["torch"]  # Apple silicon: MPS build
    gpu = has_nvidia_gpu()
    if system == "Windows":
        return ["torch", "--index-url", WINDOWS_CUDA_INDEX] if gpu else ["torch"]
    return ["torch"] if gpu else [TEST_TORCH]  # Linux PyPI wheels are CUDA builds


def ensure_env(env: Path, installs: list[list[str]], constraints: Path) -> Path:
    """Create ``env`` and run the pip installs through ``constraints`` unless an identical set-up is already
    there. A step with its own ``--index-url`` (PyTorch's CUDA builds) is not constrained: that index need not
    carry the pinned versions of torch's dependencies."""
    stamp_text = "\n".join(
        [sys.version, (ROOT / "pyproject.toml").read_text(encoding="utf-8"), Path(__file__).read_text(encoding="utf-8"),
         constraints.read_text(encoding="utf-8")] + [" ".join(step) for step in installs]
    )
    stamp = hashlib.sha256(stamp_text.encode()).hexdigest()
    stamp_file = env / ".depthfusion-setup"
    python = venv_python(env)
    if python.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return python
    print(f"[dev] setting up {env.name} (once; repeated only when the requirements change)", flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=env.exists()).create(env)
    for step in installs:
        pinned = [] if "--index-url" in step else ["-c", str(constraints)]
        run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *pinned, *step])
    stamp_file.write_text(stamp + "\n")
    return python


def run(cmd: list[str]) -> None:
    print("[dev] " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def serve(args: list[str]) -> int:
    python = ensure_env(ROOT / ".venv", [serve_torch(), ["-e", ".[generator]"]], CONSTRAINTS)
    return subprocess.call([str(python), "-m", "generator", "serve", *args], cwd=ROOT)


# What the tests need from the system (Debian packages): OSC command-line tools, the GLSL
# validator, Mesa's EGL + software OpenGL for running the shaders, and Chromium with its WebDriver for the
# web viewer's browser tests (WebGL through its own SwiftShader).
SYSTEM_PACKAGES = ["liblo-tools", "glslang-tools", "libegl1", "libegl-mesa0", "libgl1-mesa-dri", "chromium",
                   "chromium-driver", "zbar-tools"]

# td_bridge runs inside TouchDesigner: TD 2023 ships Python 3.11 with numpy 1.24.1 (TD 2025:
# numpy 2.1). These tests run a second time against that numpy, without torch.
TD_NUMPY = "numpy==1.24.1"
TD_SIDE_TESTS = ["tests/test_protocol.py", "tests/test_depth.py", "tests/test_geometry.py", "tests/test_params.py",
                 "tests/test_receiver.py", "tests/test_top_frames.py", "tests/test_component.py",
                 "tests/test_td_component.py", "tests/test_tdstub.py", "tests/test_render_setup.py",
                 "tests/test_component_osc.py", "tests/test_td_startup.py", "tests/test_component_live.py",
                 "tests/test_td_live.py"]
TD_SIDE_PACKAGES = [TD_NUMPY, "pyzmq", "pytest>=8", "hypothesis>=6.100", "python-osc>=1.8", "Pillow>=10",
                    "platformdirs>=3"]
TEST_INSTALLS = [[TEST_TORCH], ["-e", ".[generator,test]"]]
TD_INSTALLS = [TD_SIDE_PACKAGES, ["--no-deps", "-e", "."]]


def _installed(package: str) -> bool:
    query = ["dpkg-query", "-W", "-f=${Status}", package]
    result = subprocess.run(query, capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.endswith(" installed")


def ensure_system_packages() -> None:
    """Install missing test packages with apt where we can (root on Debian/Ubuntu); else the
    tests that need them skip with a reason (or fail under CI=true)."""
    if not shutil.which("dpkg-query"):
        print("[dev] not a Debian-like system: tests that need " + ", ".join(SYSTEM_PACKAGES) + " may skip")
        return
    missing = [pkg for pkg in SYSTEM_PACKAGES if not _installed(pkg)]
    if not missing:
        return
    if not (shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0):
        print(f"[dev] not installing {', '.join(missing)} (needs root and apt-get); tests that need them skip")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        print("[dev] " + " ".join(cmd), flush=True)
        if subprocess.run(cmd, env=env).returncode:
            print(f"[dev] could not install {', '.join(missing)}; tests that need them skip", file=sys.stderr)
            return


# What the tests need from the npm registry (installed into the test environment's node_modules): the Khronos
# glTF validator, which checks the mesh exports, and Meta's Immersive Web Emulation Runtime, the emulated headset
# the web viewer's WebXR test enters.
NODE_TOOLS = ("gltf-validator@2.0.0-dev.3.10", "iwer@2.5.0")


def ensure_node_tools(env: Path) -> None:
    """npm-install the pinned NODE_TOOLS into ``env`` once; without npm the tests that need them skip
    (or fail under CI=true)."""
    missing = [tool for tool in NODE_TOOLS if not (env / "node_modules" / tool.rsplit("@", 1)[0]).is_dir()]
    if not missing:
        return
    npm = shutil.which("npm")
    if npm is None:
        print(f"[dev] npm not found: not installing {', '.join(missing)}; the tests that need them skip")
        return
    cmd = [npm, "install", "--prefix", str(env), "--no-save", "--no-audit", "--no-fund", "--loglevel=error",
           *NODE_TOOLS]
    print("[dev] " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        print(f"[dev] could not install {', '.join(missing)}; the tests that need them skip", file=sys.stderr)


def test(args: list[str]) -> int:
    """The whole suite; then, when no pytest flags are given, td_bridge's tests under TD's numpy."""
    ensure_system_packages()
    python = ensure_env(ROOT / ".venv-test", TEST_INSTALLS, CONSTRAINTS)
    ensure_node_tools(ROOT / ".venv-test")
    code = subprocess.call([str(python), "-m", "pytest", *args], cwd=ROOT)
    if args:
        return code
    td_python = ensure_env(ROOT / ".venv-td", TD_INSTALLS, TD_CONSTRAINTS)
    print(f"[dev] td_bridge under TouchDesigner 2023's {TD_NUMPY}", flush=True)
    td_code = subprocess.call([str(td_python), "-m", "pytest", "-p", "no:cacheprovider", *TD_SIDE_TESTS], cwd=ROOT)
    return code or td_code


def lock(args: list[str]) -> int:
    """Re-resolve both constraints files: the test and TouchDesigner set-ups installed unconstrained, at the
    newest releases the requirements allow, in a scratch environment, then frozen. Check with `dev.py test`."""
    if args:
        print("[dev] lock takes no flags", file=sys.stderr)
        return 2
    scratch = ROOT / ".venv-lock"
    for target, installs in ((CONSTRAINTS, TEST_INSTALLS), (TD_CONSTRAINTS, TD_INSTALLS)):
        venv.EnvBuilder(with_pip=True, clear=True).create(scratch)
        python = str(venv_python(scratch))
        for step in installs:
            run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--upgrade", *step])
        frozen = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True,
                                check=True).stdout.splitlines()
        unpinnable = [line for line in frozen if "==" not in line]
        if unpinnable:
            raise SystemExit(f"[dev] not from an index, cannot be pinned by version: {', '.join(unpinnable)}")
        pins = sorted((line.split("+", 1)[0] for line in frozen), key=str.lower)  # torch==2.13.0+cpu → ==2.13.0
        target.write_text(f"# Written by `python3 dev.py lock` (Python {platform.python_version()}, "
                          f"{platform.system()} {platform.machine()}); commit it once `dev.py test` passes with it.\n"
                          + "\n".join(pins) + "\n", encoding="utf-8")
        print(f"[dev] wrote {target.name}: {len(pins)} pins", flush=True)
    shutil.rmtree(scratch)
    print("[dev] now run `python3 dev.py test`; commit constraints.txt and constraints-td.txt if it passes")
    return 0


def main(argv: list[str]) -> int:
    commands = {"serve": serve, "test": test, "lock": lock}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except subprocess.CalledProcessError as exc:
        print(f"[dev] set-up step failed (exit {exc.returncode}): {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        return exc.returncode or 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

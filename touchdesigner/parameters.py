"""The DepthFusion component's custom parameters, made from td_bridge.params (one schema).

``create_parameters(comp)`` runs inside TouchDesigner (from build_depthfusion.py) and in the
tests against the td stand-in. Pages: Connection, Generate (every generation parameter plus
Generate / Cancel / Recall, and Depth from TOP with its estimation parameters), LoRA (the LoRA slots of
the generation parameters), Live (the generator's live session: the Live toggle, the live parameters, an Input
TOP, Keep and Take), Upscale (ldm3d-sr), Remix (a region of the frame on screen regenerated), Depth and Sphere
(what the shaders use; Sphere also holds Blend Time, the crossfade from one frame to the next), Stereo and
Outputs (cameras and output sizes), OSC (the component's own OSC In DAT), Diagnose (the self-check, the shader's
position input, the convention overrides and Apply Fixes) and Status (read-only, written by DepthFusionExt).
"""

from __future__ import annotations

from typing import Any

from td_bridge.addresses import DEFAULT_COMMANDS, DEFAULT_FRAMES
from td_bridge.params import (BASE_GENERATION_PARAMS, CONVENTION_PARAMS, DISPLAY_PARAMS, ESTIMATION_PARAMS,
                              GENERATION_PARAMS, LIVE_PARAMS, LORA_PARAMS, REMIX_PARAMS, UPSCALE_PARAMS, VIEW_PARAMS,
                              find_param, td_name, td_parameter_specs)
from td_bridge.td_builds import POSITION_MENU

# name, style, label, default, help
CONNECTION = [
    ("Framesaddress", "Str", "Frames Address", DEFAULT_FRAMES, "The generator's frame publisher (tcp://HOST:PORT)."),
    ("Commandsaddress", "Str", "Commands Address", DEFAULT_COMMANDS, "The generator's command socket."),
    ("Autoconnect", "Toggle", "Connect on Start", True, "Connect when the component starts."),
    ("Connect", "Pulse", "Connect", None, "Connect (again) to the addresses above."),
    ("Disconnect", "Pulse", "Disconnect", None, "Stop receiving; the last frame stays."),
    ("Bridgepath", "Folder", "Bridge Path", "", "A folder holding pyzmq for this Python, if TouchDesigner cannot "
     "import it (TouchDesigner 2023, see docs/touchdesigner.md). td_bridge always comes from inside this component."),
]
ACTIONS = [
    ("Generate", "Pulse", "Generate", None, "Queue a generation with the parameters above."),
    ("Cancel", "Pulse", "Cancel", None, "Cancel every waiting and running job."),
    ("Recallname", "Str", "Recall Name", "", "A frame id or cue name to publish again without the model."),
    ("Recall", "Pulse", "Recall", None, "Publish the frame named above again."),
]
# Depth from TOP: send a TOP's image (a photo, a 360° photo, a render) to the generator's depth model.
DEPTH_FROM_TOP = [
    ("Depthtop", "TOP", "Depth Source TOP", "", "The TOP whose image Depth from TOP sends (e.g. a Movie File In of "
     "a 360° photo); 2:1 images are treated as panoramas unless Pano says otherwise."),
    ("Depthfromtop", "Pulse", "Depth from TOP", None, "Estimate depth for the Depth Source TOP's image on the "
     "generator; the frame arrives like a generated one (cue: the Cue above)."),
]
ESTIMATE_PARAMS = [p for p in ESTIMATION_PARAMS if p.name != "cue"]  # the cue is the Generate page's Cue
UPSCALE = [
    ("Upscaleafter", "Toggle", "Upscale After Generating", False, "Upscale every frame Generate makes with ldm3d-sr "
     "(the generator needs --upscaler); the upscaled frame follows the generated one."),
    ("Upscale", "Pulse", "Upscale", None, "Upscale the frame on screen with the parameters above (the generator "
     "needs --upscaler). Over 1280x1280 needs a Commercial licence to show."),
]
REMIX = [
    ("Masktop", "TOP", "Mask TOP", "", "A TOP whose white (its first channel) Remix regenerates instead of the "
     "region above, black kept: an equirectangular mask of the frame's shape, resampled to the frame on screen's "
     "size. Empty: the region above."),
    ("Remix", "Pulse", "Remix", None, "Regenerate the region above (or the Mask TOP's white) of the frame on screen "
     "with the Generate and LoRA pages' parameters (its size stays the frame's), keeping the rest; the new frame "
     "arrives like a generated one and names its source. Yaw and Pitch as the Stereo page's: set them from where "
     "you look."),
]
# The Live page: the toggle, then the live parameters (td_bridge.params LIVE_PARAMS), then these.
LIVE = ("Live", "Toggle", "Live", False, "Run the generator's live session: frames back to back from the Generate "
        "and LoRA pages' parameters and the ones below. While on, every change of those is sent to it, at most once "
        "a frame.")
LIVE_ACTIONS = [
    ("Inputtop", "TOP", "Input TOP", "", "A TOP (a camera, a movie, a render) whose image each live frame starts "
     "from (img2img, Input Strength): sent at most Live FPS times a second, and only when the TOP cooked since the "
     "last one sent. Empty: text only."),
    ("Keep", "Pulse", "Keep", None, "Store the frame on screen in the generator's frame library exactly as shown (a "
     "live frame is not stored otherwise), under the Generate page's Cue if set."),
    ("Take", "Pulse", "Take", None, "Queue a full-quality render of the live frame on screen (its prompt, seed and "
     "input, the full steps and decoder); it arrives like a generated frame."),
    ("Takeupscale", "Toggle", "Take Upscale", False, "Take also upscales its render with the Upscale page's "
     "parameters (the generator needs --upscaler)."),
]
# Parameters whose change the live session hears about (DepthFusionExt.OnValueChange): Live starts or stops it, the
# generation and live parameters steer it while it runs.
LIVE_PARS = ["Live"] + [td_name(p.name) for p in GENERATION_PARAMS + LIVE_PARAMS]
# page → schema parameters (td_bridge.params DISPLAY_PARAMS and VIEW_PARAMS), in order
VIEW_PAGES = {
    "Depth": ("mapping", "radius", "strength", "near", "far", "cull_jump", "edges"),
    "Sphere": ("mesh_rows", "mesh_cols", "blend_time"),
    "Stereo": ("ipd", "convergence", "fov", "head_x", "head_y", "head_z", "yaw", "pitch", "eye_width", "eye_height",
               "packing"),
    "Outputs": ("ods_height", "dome_size", "dome_fov", "dome_tilt"),
}
OSC_PORT = 9001  # the generator's OSC listens on 9000
OSC = [
    ("Oscin", "Toggle", "OSC In", False, "Let show control address this component directly (see docs/touchdesigner.md)."),
    ("Oscport", "Int", "OSC Port", OSC_PORT, "UDP port of the component's OSC In DAT."),
    ("Osclocaladdress", "Str", "OSC Local Address", "127.0.0.1", "Address to listen on: 127.0.0.1 for this "
     "machine only; a LAN address (or empty, every interface) to accept show control from other machines."),
]
DIAGNOSE = [
    ("Diagnose", "Pulse", "Diagnose", None, "Check the component in this TouchDesigner (parameters, menus, shader, "
     "pixel formats, sizes, versions); the report goes to the diagnostics DAT, a summary to Status."),
    ("Shaderposition", "Menu", "Shader Position", "auto", "The GLSL MAT's vertex position input: auto picks it "
     "from the TouchDesigner build (TDPos() from 2025.30000, P before); set it if Diagnose reports a shader error."),
]
# After the convention parameters (td_bridge.params CONVENTION_PARAMS), which Diagnose's geometry check measures.
APPLY_FIXES = [
    ("Applyfixes", "Pulse", "Apply Fixes", None, "Set the convention parameters above that Diagnose's geometry check "
     "found wrong (listed in the diagnostics DAT); pulse Diagnose again to confirm."),
]
# Parameters whose change re-derives operator settings (DepthFusionExt.ApplySettings).
SETTINGS_PARS = ([td_name(p.name) for p in DISPLAY_PARAMS + VIEW_PARAMS + CONVENTION_PARAMS] + [row[0] for row in OSC]
                 + ["Shaderposition"])
STATUS = [
    ("Status", "Str", "Status", "disconnected", "What the generator is doing."),
    ("Connected", "Toggle", "Connected", False, "The generator's heartbeat arrives."),
    ("Backend", "Str", "Backend", "", "The generator's backend (ldm3d or demo)."),
    ("Progress", "Float", "Progress", 0.0, "Progress of the running job, 0 to 1."),
    ("Frameid", "Str", "Frame ID", "", "The frame on screen."),
    ("Jobid", "Str", "Job ID", "", "The last job this component queued."),
    ("Lasterror", "Str", "Last Error", "", "The last problem, in words."),
    ("Depthcheck", "Str", "Depth Check", "", "How well the frame's depth agrees with the generator's depth model "
     "(serve --depth-check): AbsRel (0 = perfect) and delta1 (1 = perfect) after scale/shift alignment."),
    ("Liveon", "Toggle", "Live On", False, "The generator's live session is running."),
    ("Liverate", "Float", "Live Rate", 0.0, "Live frames a second, measured by the generator."),
    ("Liveframes", "Int", "Live Frames", 0, "Live frames the generator made since it started."),
    ("Liveidle", "Toggle", "Live Idle", False, "Live is on but nothing changed: no frames are made, the last one "
     "stays on screen."),
]


def _append(page: Any, name: str, style: str, label: str) -> Any:
    method = {"Str": page.appendStr, "Toggle": page.appendToggle, "Pulse": page.appendPulse,
              "Float": page.appendFloat, "Int": page.appendInt, "Menu": page.appendMenu,
              "Folder": page.appendFolder, "TOP": page.appendTOP}[style]
    return method(name, label=label)


def _add(page: Any, name: str, style: str, label: str, default: Any, help_text: str, *,
         menu: list[str] | None = None, low: float | None = None, high: float | None = None,
         read_only: bool = False) -> Any:
    group = _append(page, name, style, label)
    group.help = help_text
    par = group[0]
    if menu is not None:
        par.menuNames = menu
        par.menuLabels = menu
    if low is not None:
        par.min, par.clampMin, par.normMin = low, True, low
    if high is not None:
        par.max, par.clampMax, par.normMax = high, True, high
    if default is not None:
        par.default = default
        par.val = default
    par.readOnly = read_only
    return par


def _add_specs(page: Any, specs: list[dict[str, Any]]) -> None:
    for spec in specs:
        _add(page, spec["name"], spec["style"], spec["label"], spec["default"], spec["help"],
             menu=spec.get("menu"), low=spec.get("min"), high=spec.get("max"))


def _add_group(page: Any, params: Any, rows: list[tuple]) -> None:
    """Schema parameters, then the component's own rows (name, style, label, default, help)."""
    _add_specs(page, td_parameter_specs(params, page.name))
    for row in rows:
        _add(page, *row)


def create_parameters(comp: Any) -> None:
    """Add the custom parameter pages to ``comp``."""
    _add_group(comp.appendCustomPage("Connection"), (), CONNECTION)
    generate = comp.appendCustomPage("Generate")
    _add_group(generate, BASE_GENERATION_PARAMS, ACTIONS)
    _add_group(generate, ESTIMATE_PARAMS, DEPTH_FROM_TOP)
    _add_specs(comp.appendCustomPage("LoRA"), td_parameter_specs(LORA_PARAMS, "LoRA"))
    live = comp.appendCustomPage("Live")
    _add(live, *LIVE)
    _add_group(live, LIVE_PARAMS, LIVE_ACTIONS)
    _add_group(comp.appendCustomPage("Upscale"), UPSCALE_PARAMS, UPSCALE)
    _add_group(comp.appendCustomPage("Remix"), REMIX_PARAMS, REMIX)
    view_params = DISPLAY_PARAMS + VIEW_PARAMS
    for page, names in VIEW_PAGES.items():
        params = [find_param(name, view_params) for name in names]
        _add_specs(comp.appendCustomPage(page), td_parameter_specs(params, page))
    osc = comp.appendCustomPage("OSC")
    for row in OSC:
        _add(osc, *row, **({"low": 1, "high": 65535} if row[1] == "Int" else {}))
    diagnose = comp.appendCustomPage("Diagnose")
    for row in DIAGNOSE:
        _add(diagnose, *row, **({"menu": list(POSITION_MENU)} if row[1] == "Menu" else {}))
    _add_group(diagnose, CONVENTION_PARAMS, APPLY_FIXES)
    status = comp.appendCustomPage("Status")
    for row in STATUS:
        _add(status, *row, read_only=True)

// The page: one WebSocket to the web server (commands as JSON, frames as binary, newest wins), the sphere drawn
// by viewer.js, drag to look around, side-by-side stereo and WebXR.

import { Viewer } from "./viewer.js";
import { followOrientation } from "./orientation.js";
import { enterVR, xrSupported } from "./xr.js";

const $ = (id) => document.getElementById(id);
const state = { yaw: 0, pitch: 0, mode: "mono", frames: 0, pending: new Map(), nextId: 1, socket: null, xr: null,
  connected: false, refused: false, model: false, device: null, stopDevice: null,
  drawn: null };

function send(cmd, args = {}) {
  const id = `web-${state.nextId++}`;
  return new Promise((resolve, reject) => {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
      reject(new Error("not connected"));
      return;
    }
    state.pending.set(id, { resolve, reject });
    state.socket.send(JSON.stringify({ id, cmd, args }));
  });
}

function showError(error) {
  $("status").textContent = `${error.message || error}`;
}

function onText(viewer, message) {
  if (message.type === "reply") {
    const waiting = state.pending.get(message.id);
    if (!waiting) return;
    state.pending.delete(message.id);
    if (message.ok) waiting.resolve(message.result);
    else waiting.reject(new Error(`${message.error.code}: ${message.error.message}`));
  } else if (message.type === "hello") {
    state.connected = true;
    for (const id of ["prompt", "seed", "go", "cancel", "live", "search"]) $(id).disabled = !message.commands;
    $("status").textContent = message.commands ? "connected" : message.model ? "an exported mesh" : "a saved frame";
    state.model = message.model;
    if (message.model && !viewer.model) viewer.loadModel().catch(showError);
  } else if (message.type === "view") {
    viewer.setSettings(message).catch(showError);
    showSettings(message);
  } else if (message.type === "progress") {
    $("progress").value = message.total ? message.step / message.total : 0;
  } else if (message.type === "status") {
    const live = message.live && message.live.on ? ` · live ${message.live.fps.toFixed(1)} fps` : "";
    $("status").textContent = `${message.state}${message.queued ? ` · ${message.queued} queued` : ""}${live}`;
    $("live").checked = Boolean(message.live && message.live.on);
  } else if (message.type === "error") {
    showError(message.message);
  }
}

function showSettings(message) {
  const { display, view } = message;
  $("mapping").value = display.mapping;
  $("strength").value = display.strength;
  $("edges").value = view.edges;
  // an exported mesh is displaced already: its mapping, strength and edges were fixed when it was written
  $("mapping").disabled = $("edges").disabled = state.model;
  $("strength").disabled = state.model || display.mapping !== "linear";
  $("ipd").value = view.ipd;
  $("ipd").title = `${view.ipd} m`;
}

function connect(viewer) {
  const token = new URLSearchParams(location.search).get("token");
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${query}`;
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  state.socket = socket;
  let opened = false;
  socket.onopen = () => { opened = true; };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") {
      onText(viewer, JSON.parse(event.data));
    } else {
      const header = viewer.setFrame(event.data);
      state.frames += 1;
      $("prompt").placeholder = header.prompt || "prompt";
    }
  };
  socket.onclose = async () => {
    state.connected = false;
    for (const waiting of state.pending.values()) waiting.reject(new Error("disconnected"));
    state.pending.clear();
    // A refused handshake hides its reason from the page: ask whether it was the token (then retrying is no use).
    const access = opened ? null : await fetch(`/access${query}`).catch(() => null);
    if (access && access.status === 403) {
      state.refused = true;
      $("status").textContent = "refused: missing or wrong access token; open the address the generator's log " +
        "prints, ?token=… included";
      return;
    }
    $("status").textContent = "disconnected; retrying…";
    setTimeout(() => connect(viewer), 2000);
  };
}

function fillChoices(select, param) {
  for (const choice of param.choices) select.add(new Option(choice, choice));
  select.title = param.help;
}

function setUpControls(viewer, schema) {
  const byName = Object.fromEntries([...schema.display, ...schema.view].map((p) => [p.name, p]));
  fillChoices($("mapping"), byName.mapping);
  fillChoices($("edges"), byName.edges);
  for (const name of ["strength", "ipd"]) {
    Object.assign($(name), { min: byName[name].minimum, max: byName[name].maximum, title: byName[name].help });
  }
  const display = (name, value) => send("display", { [name]: value }).catch(showError);
  $("mapping").onchange = () => display("mapping", $("mapping").value);
  $("edges").onchange = () => display("edges", $("edges").value);
  $("strength").onchange = () => display("strength", Number($("strength").value));
  $("ipd").onchange = () => display("ipd", Number($("ipd").value));
  $("mode").onchange = () => { state.mode = $("mode").value; };
  $("go").onclick = () => {
    const args = { seed: Number($("seed").value) };
    if ($("prompt").value) args.prompt = $("prompt").value;
    const cmd = $("live").checked ? "live" : "generate";
    send(cmd, args).then((r) => { $("status").textContent = r.job_id ? `queued ${r.job_id}` : "live updated"; })
      .catch(showError);
  };
  $("cancel").onclick = () => send("cancel").catch(showError);
  $("live").onchange = () => send("live", { on: $("live").checked }).catch(showError);
  $("search").onchange = () => listFrames().catch(showError);
}

async function listFrames() {
  const result = await send("library", { search: $("search").value, limit: 50 });
  const list = $("frames");
  list.replaceChildren();
  for (const frame of result.frames) {
    const item = document.createElement("li");
    item.textContent = `${frame.cue || frame.prompt || frame.frame_id}`.slice(0, 80);
    const recall = document.createElement("button");
    recall.textContent = "show";
    recall.onclick = () => send("recall", { frame_id: frame.frame_id }).catch(showError);
    item.append(recall);
    list.append(item);
  }
}

function setUpDrag(canvas) {
  let last = null;
  canvas.addEventListener("pointerdown", (e) => {
    last = [e.clientX, e.clientY];
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointerup", () => { last = null; });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const degreesPerPixel = 90 / canvas.clientHeight;
    state.yaw += (e.clientX - last[0]) * degreesPerPixel;
    state.pitch = Math.max(-89, Math.min(89, state.pitch + (e.clientY - last[1]) * degreesPerPixel));
    last = [e.clientX, e.clientY];
  });
}

// Where the head looks: the settings' yaw and pitch, turned by dragging and, while the phone is followed, by its
// orientation (yaw relative to where it pointed at the start, pitch as held).
function look(viewer) {
  const { view } = viewer.settings;
  const device = state.device || { yaw: 0, pitch: view.pitch };
  return { yaw: view.yaw + device.yaw + state.yaw, pitch: Math.max(-90, Math.min(90, device.pitch + state.pitch)) };
}

function setUpOrientation() {
  if (!globalThis.DeviceOrientationEvent) return;
  const box = $("gyro");
  box.parentElement.hidden = false;
  box.onchange = async () => {
    if (state.stopDevice) state.stopDevice();
    state.stopDevice = null;
    state.device = null;
    if (!box.checked) return;
    try {
      state.stopDevice = await followOrientation((device) => { state.device = device; });
    } catch (error) {
      box.checked = false;
      showError(error);
    }
  };
}

function render(viewer) {
  requestAnimationFrame(() => render(viewer));
  if (state.xr || !viewer.ready) return;
  const canvas = viewer.canvas;
  const scale = window.devicePixelRatio || 1;
  const [w, h] = [Math.round(canvas.clientWidth * scale), Math.round(canvas.clientHeight * scale)];
  if (canvas.width !== w || canvas.height !== h) Object.assign(canvas, { width: w, height: h });
  const { yaw, pitch } = look(viewer);
  viewer.begin(null);
  if (state.mode === "sbs") {
    const half = Math.floor(w / 2);
    viewer.drawEye("left", yaw, pitch, 0, 0, half, h);
    viewer.drawEye("right", yaw, pitch, half, 0, w - half, h);
  } else {
    viewer.drawEye("mono", yaw, pitch, 0, 0, w, h);
  }
  state.drawn = state.mode;
}

async function main() {
  const schema = await (await fetch("/schema.json")).json();
  const viewer = new Viewer($("view"), schema.position_attribute);
  await viewer.init();
  setUpControls(viewer, schema);
  setUpDrag(viewer.canvas);
  setUpOrientation();
  if (await xrSupported()) {
    $("vr").hidden = false;
    $("vr").onclick = () => enterVR(viewer, () => { state.xr = null; })
      .then((session) => { state.xr = session; }).catch(showError);
  }
  // For automation and tests: the connection, the frame count, a command, a fixed view read back (RGBA, row 0
  // on top), and in a WebXR session the views of its last frame (eye, row-major world → clip, viewport).
  window.depthfusion = {
    connected: () => state.connected,
    refused: () => state.refused,
    frames: () => state.frames,
    frame: () => viewer.frame,
    ready: () => viewer.ready,
    send,
    snapshot: (eye, yaw, pitch, width, height) => viewer.snapshot(eye, yaw, pitch, width, height),
    xr: () => Boolean(state.xr),
    look: () => (viewer.settings ? look(viewer) : null),
    drawn: () => state.drawn,
    xrViews: () => viewer.xrViews,
  };
  connect(viewer);
  render(viewer);
}

main().catch(showError);

// The displaced sphere in WebGL 2, drawn by the component's own GLSL (served as GLSL ES 3.0 by
// generator/web/shaders.py) with td_bridge's mesh, uniforms and clip planes (from the server).

import { eyeMatrix } from "./camera.js";
import { ModelMesh } from "./model.js";
import { link } from "./program.js";

const UNITS = { sDepth: 0, sColor: 1, sDepthPrev: 3, sColorPrev: 4 };
const UNIFORM_VECTORS = ["uMapping", "uRange", "uPoles", "uMeshStep", "uBlend"];

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response;
}

export class Viewer {
  constructor(canvas, attribute) {
    this.canvas = canvas;
    this.gl = canvas.getContext("webgl2", { antialias: false, alpha: false, preserveDrawingBuffer: true,
      xrCompatible: true });
    if (!this.gl) throw new Error("this browser has no WebGL 2");
    this.attribute = attribute;
    this.settings = null;  // the server's view message: display, view, uniforms, clip
    this.mesh = null;
    this.meshKey = "";
    this.textures = null;
    this.frame = null;
    this.xrViews = [];  // the last WebXR frame's views, for automation
    this.model = null;  // an exported mesh shown instead of frames (view MESH.glb)
    this.modelLoading = null;  // its fetch while it runs
  }

  async init() {
    const gl = this.gl;
    const [vertex, pixel] = await Promise.all(["vertex", "pixel"].map(async (stage) =>
      (await fetchOk(`/shaders/${stage}.glsl`)).text()));
    const program = link(gl, vertex, pixel, { [this.attribute]: 0 });
    this.program = program;
    this.locations = {};
    for (const name of [...UNIFORM_VECTORS, ...Object.keys(UNITS), "uTDWorldToProj"])
      this.locations[name] = gl.getUniformLocation(program, name);
    // each vector uniform's size: the server sends four components, cut to what the shader declares (uMeshStep: 2)
    const sizes = { [gl.FLOAT_VEC2]: 2, [gl.FLOAT_VEC3]: 3, [gl.FLOAT_VEC4]: 4 };
    this.vectorSizes = {};
    for (let i = 0; i < gl.getProgramParameter(program, gl.ACTIVE_UNIFORMS); i++) {
      const info = gl.getActiveUniform(program, i);
      if (UNIFORM_VECTORS.includes(info.name)) this.vectorSizes[info.name] = sizes[info.type];
    }
  }

  // The settings in force (the server's "view" message); fetches td_bridge's mesh when its size changes.
  async setSettings(settings) {
    this.settings = settings;
    const key = `${settings.display.mesh_rows}x${settings.display.mesh_cols}`;
    if (key === this.meshKey) return;
    this.meshKey = key;
    const url = `/mesh.bin?rows=${settings.display.mesh_rows}&cols=${settings.display.mesh_cols}`;
    const data = await (await fetchOk(url)).arrayBuffer();
    if (key !== this.meshKey) return;  // a newer size was asked for meanwhile
    const [vertices, indices] = new Uint32Array(data, 0, 2);
    const gl = this.gl;
    const vao = gl.createVertexArray();
    gl.bindVertexArray(vao);
    const vbo = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, vbo);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array(data, 8, vertices * 3), gl.STATIC_DRAW);
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 3, gl.FLOAT, false, 0, 0);
    const ibo = gl.createBuffer();
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, ibo);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, new Uint32Array(data, 8 + vertices * 12, indices), gl.STATIC_DRAW);
    gl.bindVertexArray(null);
    if (this.mesh) {
      gl.deleteVertexArray(this.mesh.vao);
      gl.deleteBuffer(this.mesh.vbo);
      gl.deleteBuffer(this.mesh.ibo);
    }
    this.mesh = { vao, vbo, ibo, count: indices };
  }

  // A binary frame message (generator/web/messages.py): header, RGB and depth, rows bottom first.
  setFrame(buffer) {
    const length = new DataView(buffer).getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
    const { width, height } = header;
    const rgb = new Uint8Array(buffer, 4 + length, width * height * 3);
    const raw = new DataView(buffer, 4 + length + width * height * 3, width * height * 2);
    const depth = new Float32Array(width * height);
    for (let i = 0; i < depth.length; i++) depth[i] = raw.getUint16(2 * i, true) / 65535;
    const gl = this.gl;
    if (this.textures) this.textures.forEach((t) => gl.deleteTexture(t));
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    const depthTexture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, depthTexture);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.R32F, width, height, 0, gl.RED, gl.FLOAT, depth);
    this.parameters(gl.NEAREST, gl.CLAMP_TO_EDGE);  // read with texelFetch only
    const colorTexture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, colorTexture);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB8, width, height, 0, gl.RGB, gl.UNSIGNED_BYTE, rgb);
    this.parameters(gl.LINEAR, gl.REPEAT);  // wrap across the seam, clamp at the poles
    this.textures = [depthTexture, colorTexture];
    this.frame = header;
    return header;
  }

  // Show the server's /model.bin (an exported mesh) instead of frames.
  // Once: a reconnect while it loads reuses the same fetch. The token, if the page has one, goes with it.
  loadModel() {
    this.modelLoading ??= fetchOk(`/model.bin${location.search}`).then((r) => r.arrayBuffer())
      .then((bytes) => { this.model = new ModelMesh(this.gl, bytes); })
      .catch((error) => { this.modelLoading = null; throw error; });  // the next hello tries again
    return this.modelLoading;
  }

  parameters(filter, wrapS) {
    const gl = this.gl;
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, filter);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, filter);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, wrapS);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  }

  get ready() {
    return Boolean(this.settings && (this.model || (this.program && this.mesh && this.textures)));
  }

  // Clear the framebuffer bound now (null: the canvas) and set the material's blending (fade: premultiplied).
  begin(framebuffer) {
    const gl = this.gl;
    gl.bindFramebuffer(gl.FRAMEBUFFER, framebuffer);
    gl.depthMask(true);
    gl.clearColor(0, 0, 0, 0);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
  }

  // Draw the sphere into the viewport (x, y, w, h) through a row-major world → clip matrix.
  draw(matrix, x, y, w, h) {
    if (!this.ready) return;
    const gl = this.gl;
    gl.viewport(x, y, w, h);
    if (this.model) {
      this.model.draw(matrix);
      return;
    }
    const fade = this.settings.view.edges === "fade";
    gl.enable(gl.DEPTH_TEST);
    gl.disable(gl.CULL_FACE);
    if (fade) {
      gl.enable(gl.BLEND);
      gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    } else {
      gl.disable(gl.BLEND);
    }
    gl.depthMask(!fade);
    gl.useProgram(this.program);
    for (const [name, size] of Object.entries(this.vectorSizes))
      gl[`uniform${size}fv`](this.locations[name], this.settings.uniforms[name].slice(0, size));
    for (const [name, unit] of Object.entries(UNITS)) gl.uniform1i(this.locations[name], unit);
    gl.uniformMatrix4fv(this.locations.uTDWorldToProj, true, matrix);
    for (const [name, unit] of Object.entries(UNITS)) {
      gl.activeTexture(gl.TEXTURE0 + unit);
      gl.bindTexture(gl.TEXTURE_2D, this.textures[name.startsWith("sDepth") ? 0 : 1]);
    }
    gl.bindVertexArray(this.mesh.vao);
    gl.drawElements(gl.TRIANGLES, this.mesh.count, gl.UNSIGNED_INT, 0);
    gl.bindVertexArray(null);
  }

  // One eye (mono, left or right) of the schema's view settings turned by yaw/pitch, into a viewport.
  drawEye(eye, yaw, pitch, x, y, w, h) {
    const { view } = this.settings;
    const clip = this.model ? this.model.clip : this.settings.clip;
    this.draw(eyeMatrix(view, clip, eye, w / h, yaw, pitch), x, y, w, h);
  }

  // The view drawn off screen at width × height: RGBA bytes, row 0 at the top.
  snapshot(eye, yaw, pitch, width, height) {
    const gl = this.gl;
    const framebuffer = gl.createFramebuffer();
    const color = gl.createRenderbuffer();
    const depth = gl.createRenderbuffer();
    gl.bindRenderbuffer(gl.RENDERBUFFER, color);
    gl.renderbufferStorage(gl.RENDERBUFFER, gl.RGBA8, width, height);
    gl.bindRenderbuffer(gl.RENDERBUFFER, depth);
    gl.renderbufferStorage(gl.RENDERBUFFER, gl.DEPTH_COMPONENT24, width, height);
    gl.bindFramebuffer(gl.FRAMEBUFFER, framebuffer);
    gl.framebufferRenderbuffer(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.RENDERBUFFER, color);
    gl.framebufferRenderbuffer(gl.FRAMEBUFFER, gl.DEPTH_ATTACHMENT, gl.RENDERBUFFER, depth);
    this.begin(framebuffer);
    this.drawEye(eye, yaw, pitch, 0, 0, width, height);
    const pixels = new Uint8Array(width * height * 4);
    gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, pixels);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.deleteFramebuffer(framebuffer);
    gl.deleteRenderbuffer(color);
    gl.deleteRenderbuffer(depth);
    const flipped = new Uint8Array(pixels.length);
    const row = width * 4;
    for (let y = 0; y < height; y++) flipped.set(pixels.subarray((height - 1 - y) * row, (height - y) * row), y * row);
    return flipped;
  }
}

// An exported mesh (`view MESH.glb`): positions, texture coordinates, vertex colours and one base colour texture
// from the server's /model.bin (generator/web/meshes.py), drawn unlit as the .glb's material asks.

import { link } from "./program.js";

const VERTEX = `#version 300 es
layout(location = 0) in vec3 P;
layout(location = 1) in vec2 uv;
layout(location = 2) in vec3 color;
uniform mat4 uWorldToProj;
out vec2 vUV;
out vec3 vColor;
void main() {
  vUV = uv;
  vColor = color;
  gl_Position = uWorldToProj * vec4(P, 1.0);
}`;

const PIXEL = `#version 300 es
precision highp float;
uniform sampler2D sColor;
in vec2 vUV;
in vec3 vColor;
out vec4 fragColor;
void main() {
  fragColor = vec4(texture(sColor, vUV).rgb * vColor, 1.0);
}`;

export class ModelMesh {
  constructor(gl, buffer) {
    this.gl = gl;
    const length = new DataView(buffer).getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
    this.header = header;
    this.clip = header.clip;
    const n = header.vertices;
    let offset = 4 + length;
    const take = (bytes) => { const part = buffer.slice(offset, offset + bytes); offset += bytes; return part; };
    const positions = take(n * 12);
    const uvs = take(n * 8);
    const colors = take(n * 3);
    const indices = new Uint32Array(take(header.indices * 4));
    const texture = new Uint8Array(take(header.width * header.height * 3));

    const program = link(gl, VERTEX, PIXEL);
    this.program = program;
    this.matrix = gl.getUniformLocation(program, "uWorldToProj");
    this.sampler = gl.getUniformLocation(program, "sColor");

    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    const attribute = (location, data, size, type, normalized) => {
      const vbo = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, vbo);
      gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
      gl.enableVertexAttribArray(location);
      gl.vertexAttribPointer(location, size, type, normalized, 0, 0);
    };
    attribute(0, positions, 3, gl.FLOAT, false);
    attribute(1, uvs, 2, gl.FLOAT, false);
    attribute(2, colors, 3, gl.UNSIGNED_BYTE, true);
    const ibo = gl.createBuffer();
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, ibo);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, indices, gl.STATIC_DRAW);
    gl.bindVertexArray(null);
    this.count = indices.length;

    this.texture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, this.texture);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB8, header.width, header.height, 0, gl.RGB, gl.UNSIGNED_BYTE, texture);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  }

  // Draw through a row-major world → clip matrix into the viewport set by the caller.
  draw(matrix) {
    const gl = this.gl;
    gl.enable(gl.DEPTH_TEST);
    gl.disable(gl.CULL_FACE);
    gl.disable(gl.BLEND);
    gl.depthMask(true);
    gl.useProgram(this.program);
    gl.uniformMatrix4fv(this.matrix, true, matrix);
    gl.uniform1i(this.sampler, 0);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.texture);
    gl.bindVertexArray(this.vao);
    gl.drawElements(gl.TRIANGLES, this.count, gl.UNSIGNED_INT, 0);
    gl.bindVertexArray(null);
  }
}

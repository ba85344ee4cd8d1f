// Eye cameras of the one geometry (td_bridge/geometry.py, generator/render/cameras.py): a head turned by yaw then
// pitch, eyes ±IPD/2 along its right axis, off-axis frusta sharing a window at the convergence distance.
// Matrices are row-major arrays of 16 (math order); upload them with transpose = true.

const EYE_SIGNS = { left: -1, mono: 0, right: 1 };
const RAD = Math.PI / 180;

export function multiply(a, b) {
  const out = new Array(16).fill(0);
  for (let i = 0; i < 4; i++)
    for (let j = 0; j < 4; j++)
      for (let k = 0; k < 4; k++) out[4 * i + j] += a[4 * i + k] * b[4 * k + j];
  return out;
}

// Head rotation (3×3, row-major): pitch about X, then yaw about Y (degrees).
export function rotation(yawDeg, pitchDeg) {
  const [y, p] = [yawDeg * RAD, pitchDeg * RAD];
  const ry = [Math.cos(y), 0, Math.sin(y), 0, 1, 0, -Math.sin(y), 0, Math.cos(y)];
  const rx = [1, 0, 0, 0, Math.cos(p), -Math.sin(p), 0, Math.sin(p), Math.cos(p)];
  const r = new Array(9).fill(0);
  for (let i = 0; i < 3; i++)
    for (let j = 0; j < 3; j++)
      for (let k = 0; k < 3; k++) r[3 * i + j] += ry[3 * i + k] * rx[3 * k + j];
  return r;
}

function frustum(left, right, bottom, top, near, far) {
  return [2 * near / (right - left), 0, (right + left) / (right - left), 0,
    0, 2 * near / (top - bottom), (top + bottom) / (top - bottom), 0,
    0, 0, -(far + near) / (far - near), -2 * far * near / (far - near),
    0, 0, -1, 0];
}

function offAxisProjection(offset, convergence, fovDeg, aspect, near, far) {
  const top = near * Math.tan(fovDeg * RAD / 2);
  const halfWidth = top * aspect;
  const shift = offset * near / convergence;
  return frustum(-halfWidth - shift, halfWidth - shift, -top, top, near, far);
}

// World → clip for the left, right or mono eye. view: the schema's view settings (ipd, convergence, fov, head_*),
// turned to yaw/pitch; clip: [near, far] from the server (td_bridge.render_setup.clip_range).
export function eyeMatrix(view, clip, eye, aspect, yaw, pitch) {
  const r = rotation(yaw, pitch);
  const offset = EYE_SIGNS[eye] * view.ipd / 2;
  const eyePos = [0, 1, 2].map((i) => [view.head_x, view.head_y, view.head_z][i] + r[3 * i] * offset);
  const viewM = [r[0], r[3], r[6], 0, r[1], r[4], r[7], 0, r[2], r[5], r[8], 0, 0, 0, 0, 1];
  for (let i = 0; i < 3; i++) viewM[4 * i + 3] = -(viewM[4 * i] * eyePos[0] + viewM[4 * i + 1] * eyePos[1] +
    viewM[4 * i + 2] * eyePos[2]);
  return multiply(offAxisProjection(offset, view.convergence, view.fov, aspect, clip[0], clip[1]), viewM);
}

// A column-major WebXR matrix (Float32Array of 16) as a row-major array.
export function fromColumnMajor(m) {
  const out = new Array(16);
  for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) out[4 * i + j] = m[4 * j + i];
  return out;
}

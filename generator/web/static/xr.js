// WebXR immersive-vr: each eye drawn with the device's own projection and pose (its IPD, not the schema's),
// from a 'local' reference space whose origin is where the viewer's head was at the start: the sphere's centre.

import { fromColumnMajor, multiply } from "./camera.js";

export async function xrSupported() {
  return Boolean(navigator.xr) && await navigator.xr.isSessionSupported("immersive-vr").catch(() => false);
}

export async function enterVR(viewer, onEnd) {
  const gl = viewer.gl;
  const session = await navigator.xr.requestSession("immersive-vr");
  await gl.makeXRCompatible();
  const layer = new XRWebGLLayer(session, gl, { antialias: false });
  session.updateRenderState({ baseLayer: layer });
  const space = await session.requestReferenceSpace("local");
  session.addEventListener("end", onEnd);
  const frame = (time, xrFrame) => {
    session.requestAnimationFrame(frame);
    const pose = xrFrame.getViewerPose(space);
    if (!pose) return;
    viewer.begin(layer.framebuffer);
    const drawn = [];
    for (const view of pose.views) {
      const vp = layer.getViewport(view);
      const matrix = multiply(fromColumnMajor(view.projectionMatrix), fromColumnMajor(view.transform.inverse.matrix));
      viewer.draw(matrix, vp.x, vp.y, vp.width, vp.height);
      drawn.push({ eye: view.eye, matrix, viewport: [vp.x, vp.y, vp.width, vp.height] });
    }
    viewer.xrViews = drawn;
  };
  session.requestAnimationFrame(frame);
  return session;
}

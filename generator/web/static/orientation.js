// Looking around by turning the phone: the deviceorientation event's Euler angles (W3C DeviceOrientation: the
// device frame turned by alpha about Z, beta about X', gamma about Y'' from Earth's East-North-Up) give the
// direction the back of the device points; the view looks that way. Its yaw is taken relative to where the device
// pointed when following began (compass headings are not needed); roll is left out: the eye cameras have none.

const RAD = Math.PI / 180;

// {yaw, pitch} in degrees of the direction out of the device's back, in the viewer's terms: yaw 0 looks north
// (the viewer's −Z), positive yaw turns left, positive pitch looks up.
export function lookFromOrientation(alpha, beta, gamma) {
  const [a, b, g] = [alpha * RAD, beta * RAD, gamma * RAD];
  const east = -(Math.cos(a) * Math.sin(g) + Math.sin(a) * Math.sin(b) * Math.cos(g));
  const north = -(Math.sin(a) * Math.sin(g) - Math.cos(a) * Math.sin(b) * Math.cos(g));
  const up = -Math.cos(b) * Math.cos(g);
  return { yaw: Math.atan2(-east, north) / RAD, pitch: Math.asin(Math.max(-1, Math.min(1, up))) / RAD };
}

// Follow the device's orientation: onLook({yaw, pitch}) with yaw relative to the first reading. Returns a function
// that stops following. iOS asks the user first (call from a click).
export async function followOrientation(onLook) {
  const ask = globalThis.DeviceOrientationEvent && DeviceOrientationEvent.requestPermission;
  if (ask && (await DeviceOrientationEvent.requestPermission()) !== "granted") {
    throw new Error("motion and orientation access was not allowed");
  }
  let start = null;
  const listener = (event) => {
    if (event.alpha === null || event.beta === null || event.gamma === null) return;
    const look = lookFromOrientation(event.alpha, event.beta, event.gamma);
    if (start === null) start = look.yaw;
    onLook({ yaw: ((look.yaw - start + 540) % 360) - 180, pitch: look.pitch });
  };
  window.addEventListener("deviceorientation", listener);
  return () => window.removeEventListener("deviceorientation", listener);
}

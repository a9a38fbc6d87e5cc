// Frames a model from its bounding box (seed 002 §4.3): whatever its size or offset, the
// whole model ends up in view, centred. Pure arithmetic, so it is tested on its own.
//
// The box's bounding sphere (centre c, radius r) is fitted in the narrower of the two
// fields of view: at distance d = r / sin(fov/2) the sphere touches the view cone, so
// every corner of the box, being inside the sphere, is inside the view. A margin keeps
// the model off the edges.

export type Vec3 = [number, number, number]

export interface Framing {
  target: Vec3
  position: Vec3
  near: number
  far: number
  /** The radius the framing used (1 for an empty or degenerate box). */
  radius: number
}

export interface FramingInput {
  min: Vec3
  max: Vec3
  /** Vertical field of view, in degrees (three.js's PerspectiveCamera.fov). */
  fovDegrees: number
  /** Width / height of the canvas. */
  aspect: number
  /** The direction from the target towards the camera; normalised here. */
  direction?: Vec3
  /** Space kept around the model, as a factor of its radius (1.05: 5 %; the sphere is already looser than the box). */
  margin?: number
}

export function frameBox({ min, max, fovDegrees, aspect, direction = [0.45, 0.3, 1], margin = 1.05 }: FramingInput): Framing {
  const finite = [...min, ...max].every(Number.isFinite) && min.every((v, i) => v <= max[i]!)
  const target: Vec3 = finite ? [(min[0] + max[0]) / 2, (min[1] + max[1]) / 2, (min[2] + max[2]) / 2] : [0, 0, 0]
  const half = finite ? [max[0] - target[0], max[1] - target[1], max[2] - target[2]] : [0, 0, 0]
  let radius = Math.hypot(half[0]!, half[1]!, half[2]!)
  if (!(radius > 0)) radius = 1
  const vertical = (fovDegrees * Math.PI) / 180
  const horizontal = 2 * Math.atan(Math.tan(vertical / 2) * Math.max(aspect, 1e-3))
  const fov = Math.min(vertical, horizontal)
  const distance = (radius * margin) / Math.sin(fov / 2)
  const length = Math.hypot(...direction) || 1
  const unit = direction.map((v) => v / length) as Vec3
  const position: Vec3 = [target[0] + unit[0] * distance, target[1] + unit[1] * distance, target[2] + unit[2] * distance]
  // Near and far enclose the sphere with room to zoom (the viewer lets the camera come
  // to 1.2 r and go back to 5 d), keeping their ratio near 1:250 so the depth buffer
  // stays precise at any scale.
  const near = (distance - radius) * 0.05
  const far = distance * 5 + radius * 2
  return { target, position, near, far, radius }
}

import { PerspectiveCamera, Vector3 } from 'three'
import { describe, expect, it } from 'vitest'
import { frameBox, type Vec3 } from '../src/lib/framing'

/** A small deterministic generator, so a failure can be replayed. */
function random(seed: number) {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = Math.imul(s ^ (s >>> 15), 1 | s)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Places a three.js camera as the viewer does and projects the box's eight corners. */
function project(min: Vec3, max: Vec3, fov: number, aspect: number, direction?: Vec3) {
  const f = frameBox({ min, max, fovDegrees: fov, aspect, direction })
  const camera = new PerspectiveCamera(fov, aspect, f.near, f.far)
  camera.position.set(...f.position)
  camera.lookAt(new Vector3(...f.target))
  camera.updateMatrixWorld()
  camera.updateProjectionMatrix()
  const corners: Vector3[] = []
  for (const x of [min[0], max[0]])
    for (const y of [min[1], max[1]]) for (const z of [min[2], max[2]]) corners.push(new Vector3(x, y, z).project(camera))
  return { f, corners }
}

describe('frameBox', () => {
  it('keeps every corner of any box in view, at any size, offset and screen shape', () => {
    const next = random(2024)
    for (let i = 0; i < 2000; i++) {
      const scale = 10 ** (next() * 12 - 6) // 1e-6 … 1e6
      const offset = 10 ** (next() * 8 - 2) * (next() < 0.5 ? -1 : 1)
      const min: Vec3 = [0, 0, 0].map(() => offset + (next() - 0.5) * scale) as Vec3
      // Some boxes are flat or long and thin.
      const extent: Vec3 = [0, 0, 0].map(() => scale * (next() < 0.1 ? 0 : next() ** 3)) as Vec3
      const max: Vec3 = [min[0] + extent[0], min[1] + extent[1], min[2] + extent[2]]
      const aspect = 0.3 + next() * 3 // a phone held upright … a wide desktop
      const fov = 20 + next() * 70
      const direction: Vec3 = [next() - 0.5, next() - 0.5, next() - 0.5]
      const { corners } = project(min, max, fov, aspect, direction)
      for (const c of corners) {
        const where = `box ${min} → ${max}, aspect ${aspect}, fov ${fov}`
        expect(Math.abs(c.x), where).toBeLessThanOrEqual(1)
        expect(Math.abs(c.y), where).toBeLessThanOrEqual(1)
        // Between the near and far planes.
        expect(Math.abs(c.z), where).toBeLessThanOrEqual(1)
      }
    }
  })

  it('fills the view rather than shrinking the model to a dot', () => {
    for (const aspect of [0.45, 1, 1.8]) {
      const { corners } = project([-3, 10, 7], [5, 14, 9], 40, aspect)
      const reach = Math.max(...corners.map((c) => Math.max(Math.abs(c.x), Math.abs(c.y))))
      expect(reach).toBeGreaterThan(0.45)
    }
  })

  it('centres the view on the box', () => {
    const f = frameBox({ min: [100, -4, 2], max: [110, 4, 6], fovDegrees: 40, aspect: 1 })
    expect(f.target).toEqual([105, 0, 4])
  })

  it('gives a usable camera for an empty or broken box', () => {
    for (const [min, max] of [
      [[0, 0, 0], [0, 0, 0]],
      [[Infinity, Infinity, Infinity], [-Infinity, -Infinity, -Infinity]],
      [[NaN, 0, 0], [1, 1, 1]],
    ] as [Vec3, Vec3][]) {
      const f = frameBox({ min, max, fovDegrees: 40, aspect: 1 })
      expect([...f.position, ...f.target, f.near, f.far].every(Number.isFinite)).toBe(true)
      expect(f.near).toBeGreaterThan(0)
      expect(f.far).toBeGreaterThan(f.near)
    }
  })
})

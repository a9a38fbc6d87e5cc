// The 3D viewer: three.js, GLTFLoader and OrbitControls around one canvas. This module
// is only ever loaded with `import()`, from the task page once a model is ready, so
// three.js (most of the page's weight) is not downloaded to create or watch a task.
// The meshopt decoder (EXT_meshopt_compression, the compressed copy the server makes)
// comes in the same chunk, from three's own copy: no CDN. It compiles WebAssembly, which
// the page's CSP allows with 'wasm-unsafe-eval' (src/api/web.rs).
import {
  Box3,
  CanvasTexture,
  Color,
  type Material,
  Mesh,
  type Object3D,
  PerspectiveCamera,
  PMREMGenerator,
  Scene,
  SRGBColorSpace,
  Spherical,
  Vector3,
  WebGLRenderer,
} from 'three'
import { GLTFLoader } from 'three/examples/jsm/loaders/GLTFLoader.js'
import { MeshoptDecoder } from 'three/examples/jsm/libs/meshopt_decoder.module.js'
import { OrbitControls } from 'three/examples/jsm/controls/OrbitControls.js'
import { RoomEnvironment } from 'three/examples/jsm/environments/RoomEnvironment.js'
import { frameBox, type Vec3 } from '../lib/framing'

export type Background = 'neutral' | 'studio'

export interface ModelStats {
  triangles: number
  vertices: number
}

export interface Viewer {
  load(url: string): Promise<ModelStats>
  reset(): void
  setWireframe(on: boolean): void
  setBackground(background: Background): void
  dispose(): void
}

const NEUTRAL = new Color(0xe6e8eb)

/** A vertical gradient, dark at the bottom: the look of a photo studio's backdrop. */
function studioBackdrop(): CanvasTexture {
  const canvas = document.createElement('canvas')
  canvas.width = 2
  canvas.height = 256
  const context = canvas.getContext('2d')
  if (context) {
    const gradient = context.createLinearGradient(0, 0, 0, 256)
    gradient.addColorStop(0, '#4a5263')
    gradient.addColorStop(0.6, '#262a33')
    gradient.addColorStop(1, '#121418')
    context.fillStyle = gradient
    context.fillRect(0, 0, 2, 256)
  }
  const texture = new CanvasTexture(canvas)
  texture.colorSpace = SRGBColorSpace
  return texture
}

function eachMaterial(root: Object3D, apply: (material: Material & { wireframe?: boolean }) => void): void {
  root.traverse((node) => {
    if (node instanceof Mesh) {
      const materials = Array.isArray(node.material) ? node.material : [node.material]
      materials.forEach(apply)
    }
  })
}

export function createViewer(canvas: HTMLCanvasElement): Viewer {
  const renderer = new WebGLRenderer({ canvas, antialias: true, alpha: false })
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2))
  const scene = new Scene()
  const pmrem = new PMREMGenerator(renderer)
  const environment = pmrem.fromScene(new RoomEnvironment(), 0.04).texture
  scene.environment = environment
  scene.background = NEUTRAL
  const backdrop = studioBackdrop()
  const camera = new PerspectiveCamera(40, 1, 0.1, 100)
  const controls = new OrbitControls(camera, canvas)
  controls.enableDamping = true
  controls.dampingFactor = 0.12
  controls.screenSpacePanning = true

  let model: Object3D | null = null
  let box = new Box3(new Vector3(-1, -1, -1), new Vector3(1, 1, 1))
  let moved = false
  let dirty = true
  let frame = 0

  const size = () => {
    const width = Math.max(1, canvas.clientWidth)
    const height = Math.max(1, canvas.clientHeight)
    return { width, height }
  }

  const frameModel = () => {
    const { width, height } = size()
    const framing = frameBox({
      min: box.min.toArray() as Vec3,
      max: box.max.toArray() as Vec3,
      fovDegrees: camera.fov,
      aspect: width / height,
    })
    camera.position.set(...framing.position)
    camera.near = framing.near
    camera.far = framing.far
    camera.updateProjectionMatrix()
    controls.target.set(...framing.target)
    const distance = camera.position.distanceTo(controls.target)
    controls.minDistance = framing.radius * 1.2
    controls.maxDistance = distance * 5
    controls.update()
    moved = false
    dirty = true
  }

  const resize = () => {
    const { width, height } = size()
    renderer.setSize(width, height, false)
    camera.aspect = width / height
    camera.updateProjectionMatrix()
    // Until the person moves the camera, a new shape (a phone turned) is framed again.
    if (!moved) frameModel()
    dirty = true
  }
  const observer = new ResizeObserver(resize)
  observer.observe(canvas)

  controls.addEventListener('start', () => {
    moved = true
  })
  controls.addEventListener('change', () => {
    dirty = true
  })

  const loop = () => {
    frame = requestAnimationFrame(loop)
    // Render only when something changed: the page sits idle on phones too.
    const changed = controls.update()
    if (changed || dirty) {
      renderer.render(scene, camera)
      dirty = false
    }
  }
  loop()

  /** Keyboard control on the focused canvas: arrows turn, +/− zoom, 0 resets. */
  const onKey = (event: KeyboardEvent) => {
    const offset = camera.position.clone().sub(controls.target)
    const spherical = new Spherical().setFromVector3(offset)
    const step = Math.PI / 18
    switch (event.key) {
      case 'ArrowLeft':
        spherical.theta -= step
        break
      case 'ArrowRight':
        spherical.theta += step
        break
      case 'ArrowUp':
        spherical.phi = Math.max(0.05, spherical.phi - step)
        break
      case 'ArrowDown':
        spherical.phi = Math.min(Math.PI - 0.05, spherical.phi + step)
        break
      case '+':
      case '=':
        spherical.radius = Math.max(controls.minDistance, spherical.radius / 1.15)
        break
      case '-':
      case '_':
        spherical.radius = Math.min(controls.maxDistance, spherical.radius * 1.15)
        break
      case '0':
      case 'Home':
        frameModel()
        event.preventDefault()
        return
      default:
        return
    }
    event.preventDefault()
    camera.position.copy(controls.target).add(new Vector3().setFromSpherical(spherical))
    camera.lookAt(controls.target)
    moved = true
    dirty = true
  }
  canvas.addEventListener('keydown', onKey)

  return {
    async load(url) {
      const gltf = await new GLTFLoader().setMeshoptDecoder(MeshoptDecoder).loadAsync(url)
      if (model) scene.remove(model)
      model = gltf.scene
      scene.add(model)
      box = new Box3().setFromObject(model)
      if (box.isEmpty()) box = new Box3(new Vector3(-1, -1, -1), new Vector3(1, 1, 1))
      let triangles = 0
      let vertices = 0
      model.traverse((node) => {
        if (node instanceof Mesh) {
          const geometry = node.geometry
          const position = geometry.getAttribute('position')
          vertices += position ? position.count : 0
          triangles += geometry.index ? geometry.index.count / 3 : position ? position.count / 3 : 0
        }
      })
      resize()
      frameModel()
      return { triangles: Math.round(triangles), vertices }
    },
    reset: frameModel,
    setWireframe(on) {
      if (model) eachMaterial(model, (m) => ('wireframe' in m ? (m.wireframe = on) : undefined))
      dirty = true
    },
    setBackground(background) {
      scene.background = background === 'studio' ? backdrop : NEUTRAL
      dirty = true
    },
    dispose() {
      cancelAnimationFrame(frame)
      observer.disconnect()
      canvas.removeEventListener('keydown', onKey)
      controls.dispose()
      scene.traverse((node) => {
        if (node instanceof Mesh) {
          node.geometry.dispose()
          const materials = Array.isArray(node.material) ? node.material : [node.material]
          materials.forEach((m: Material) => m.dispose())
        }
      })
      backdrop.dispose()
      environment.dispose()
      pmrem.dispose()
      renderer.dispose()
    },
  }
}

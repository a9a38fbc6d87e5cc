// What a task's kind means to the page: the input it asks for, the output it shows and
// how, the model the form starts with, and the list's thumbnail.
import { describe, expect, it } from 'vitest'
import type { CatalogModel, Output, Task } from '../src/api/types'
import {
  byKind,
  displayOf,
  downloadName,
  initialModel,
  inputFor,
  mainOutput,
  madeImages,
  mainRole,
  modelKey,
  restingFor,
  thumbnailOf,
  thumbnailsOf,
  viewerOutput,
} from '../src/lib/kinds'

const output = (over: Partial<Output>): Output => ({
  name: 'model.glb',
  role: 'model',
  url: 'http://kiln/files/reconstruction/t/model.glb',
  format: 'glb',
  content_type: 'model/gltf-binary',
  size: 1000,
  expired: false,
  metadata: {},
  ...over,
})
const glb = output({})
const png = output({ name: 'image.png', role: 'image', format: 'png', content_type: 'image/png', url: 'http://kiln/files/images/t/image.png' })
const preview = output({ name: 'preview.webp', role: 'preview', format: 'webp', content_type: 'image/webp' })

const model = (over: Partial<CatalogModel>): CatalogModel => ({
  name: 'relief',
  kind: 'image_to_3d',
  description: '',
  default: false,
  available: true,
  cloud: false,
  channels: [],
  ...over,
})
const channel = (resting_for: number | null, available = resting_for === null) => ({
  name: `c${resting_for}`,
  provider: 'tripo',
  available,
  cloud: true,
  resting_for,
})

describe('the input a kind asks for', () => {
  it('is a picture for image-to-3D and a prompt for the text kinds', () => {
    expect(inputFor('image_to_3d')).toBe('picture')
    expect(inputFor('text_to_3d')).toBe('prompt')
    expect(inputFor('text_to_image')).toBe('prompt')
  })
})

describe('the output a task is about', () => {
  it('follows the main role of the kind, as the server does', () => {
    expect(mainRole('image_to_3d')).toBe('model')
    expect(mainRole('text_to_3d')).toBe('model')
    expect(mainRole('text_to_image')).toBe('image')
  })

  it('is the model of a 3D task, never its preview render', () => {
    expect(mainOutput('text_to_3d', [preview, glb])).toBe(glb)
    expect(mainOutput('image_to_3d', [preview])).toBeNull()
    expect(mainOutput('image_to_3d', [])).toBeNull()
    // A worker's GLB under another role still counts.
    const other = output({ role: 'mesh' })
    expect(mainOutput('image_to_3d', [preview, other])).toBe(other)
  })

  it('is the image of a text-to-image task', () => {
    expect(mainOutput('text_to_image', [png])).toBe(png)
    expect(mainOutput('text_to_image', [glb, png])).toBe(png)
    const jpeg = output({ name: 'out.jpg', role: 'result', format: 'jpg', content_type: 'image/jpeg' })
    expect(mainOutput('text_to_image', [jpeg])).toBe(jpeg)
    expect(mainOutput('text_to_image', [glb])).toBeNull()
  })
})

describe('how an output is shown', () => {
  it('by its role: a model in the viewer, an image as an image', () => {
    expect(displayOf(glb)).toBe('model')
    expect(displayOf(png)).toBe('image')
    expect(displayOf(preview)).toBe('image')
  })

  it('by its format or type when the role says nothing the page knows', () => {
    expect(displayOf(output({ role: 'mesh' }))).toBe('model')
    expect(displayOf(output({ role: 'other', format: 'png', content_type: 'image/png' }))).toBe('image')
    expect(displayOf(output({ role: 'archive', format: 'zip', content_type: 'application/zip' }))).toBe('file')
    // An "image" that is not one is offered as a file, not drawn broken.
    expect(displayOf(output({ role: 'image', format: 'bin', content_type: 'application/octet-stream' }))).toBe('file')
  })

  it('names the download after the task and the output format', () => {
    expect(downloadName('0190abcd-0000-7000-8000-0000deadbeef', png)).toBe('kiln-deadbeef.png')
    expect(downloadName('0190abcd-0000-7000-8000-0000deadbeef', glb)).toBe('kiln-deadbeef.glb')
    expect(downloadName('0190abcd-0000-7000-8000-0000deadbeef', png, 1)).toBe('kiln-deadbeef-2.png')
  })

  it('shows every picture a text-to-image task made, the main one first', () => {
    const second = output({ name: 'image-2.webp', role: 'image', format: 'webp', content_type: 'image/webp' })
    expect(madeImages('text_to_image', [second, png])).toEqual([second, png])
    expect(madeImages('text_to_image', [glb, png, second])).toEqual([png, second])
    expect(madeImages('text_to_image', [])).toEqual([])
    // A 3D task's picture is its preview, never shown as its result.
    expect(madeImages('text_to_3d', [preview, glb])).toEqual([glb])
  })
})

describe('the model picker', () => {
  const catalog = [
    model({ name: 'painter', kind: 'text_to_image', default: true, cloud: true }),
    model({ name: 'tripo', kind: 'text_to_3d', default: true, cloud: true }),
    model({ name: 'relief-slow', kind: 'image_to_3d' }),
    model({ name: 'relief', kind: 'image_to_3d', default: true }),
  ]

  it('starts with the default picture model, else any default, else the first usable', () => {
    expect(initialModel(catalog)?.name).toBe('relief')
    expect(initialModel(catalog.filter((m) => m.kind !== 'image_to_3d'))?.name).toBe('painter')
    expect(initialModel([model({ name: 'down', available: false }), model({ name: 'up' })])?.name).toBe('up')
    expect(initialModel([model({ name: 'down', available: false })])?.name).toBe('down')
    expect(initialModel([])).toBeNull()
  })

  it('groups every model by kind, picture first, the default first in each group', () => {
    expect(byKind(catalog).map((g) => [g.kind, g.models.map((m) => m.name)])).toEqual([
      ['image_to_3d', ['relief', 'relief-slow']],
      ['text_to_3d', ['tripo']],
      ['text_to_image', ['painter']],
    ])
  })

  it('tells two kinds of one model name apart', () => {
    expect(modelKey({ name: 'x', kind: 'text_to_3d' })).not.toBe(modelKey({ name: 'x', kind: 'text_to_image' }))
  })

  it('says how long a resting model waits', () => {
    expect(restingFor(model({}))).toBeNull()
    expect(restingFor(model({ channels: [channel(null)] }))).toBeNull()
    // Every channel down: the model is back when the first one is.
    expect(restingFor(model({ available: false, channels: [channel(40), channel(12)] }))).toBe(12)
    // Still usable through another channel: how long the resting one stays out.
    expect(restingFor(model({ available: true, channels: [channel(null), channel(30)] }))).toBe(30)
  })
})

describe('the thumbnail of a task in a list', () => {
  const task = (over: Partial<Task>) =>
    ({ id: 'task-1', kind: 'image_to_3d', status: 'succeeded', picture: null, ...over }) as Pick<
      Task,
      'id' | 'kind' | 'status' | 'picture'
    >

  const picture = { id: 'pic-1', url: 'http://kiln/files/pictures/pic-1.png' }

  it('is a succeeded 3D task’s preview render, then the picture it was made from', () => {
    expect(thumbnailsOf(task({ picture }))).toEqual(['/api/v1/tasks/task-1/thumbnail', '/api/v1/pictures/pic-1/thumbnail'])
    expect(thumbnailOf(task({ picture }))).toBe('/api/v1/tasks/task-1/thumbnail')
    // Not finished, or failed: only the input.
    expect(thumbnailsOf(task({ picture, status: 'running' }))).toEqual(['/api/v1/pictures/pic-1/thumbnail'])
    expect(thumbnailsOf(task({ picture, status: 'failed' }))).toEqual(['/api/v1/pictures/pic-1/thumbnail'])
    // An expired input has no thumbnail.
    expect(thumbnailsOf(task({ picture: { id: 'pic-1', url: null } }))).toEqual(['/api/v1/tasks/task-1/thumbnail'])
    expect(thumbnailOf(task({ picture: { id: 'pic-1', url: null }, status: 'canceled' }))).toBeNull()
  })

  it('is the picture it made, once it made one', () => {
    expect(thumbnailOf(task({ kind: 'text_to_image' }))).toBe('/api/v1/tasks/task-1/thumbnail')
    expect(thumbnailOf(task({ kind: 'text_to_3d' }))).toBe('/api/v1/tasks/task-1/thumbnail')
    expect(thumbnailOf(task({ kind: 'text_to_image', status: 'running' }))).toBeNull()
    expect(thumbnailOf(task({ kind: 'text_to_image', status: 'failed' }))).toBeNull()
  })
})

describe('the model the viewer loads', () => {
  const meshopt = output({
    name: 'model.meshopt.glb',
    role: 'variant',
    url: 'http://kiln/files/reconstruction/t/model.meshopt.glb',
    metadata: { format: 'glb-meshopt', ratio: 0.21 },
  })
  const core = output({ name: 'model.core.glb', role: 'variant', metadata: { format: 'glb-core' } })

  it('is the compressed copy when the server made one', () => {
    expect(viewerOutput([glb, core, meshopt])).toBe(meshopt)
    // Whatever the order of the outputs.
    expect(viewerOutput([meshopt, glb])).toBe(meshopt)
  })

  it('is the model itself otherwise, never another variant or the preview', () => {
    expect(viewerOutput([preview, glb])).toBe(glb)
    expect(viewerOutput([core, glb])).toBe(glb)
    expect(viewerOutput([{ ...meshopt, expired: true }, glb])).toBe(glb)
    expect(viewerOutput([{ ...meshopt, url: null }, glb])).toBe(glb)
    // A GLB named like the copy but not marked as one is not taken for it.
    expect(viewerOutput([output({ name: 'model.meshopt.glb', role: 'variant' }), glb])).toBe(glb)
    expect(viewerOutput([])).toBeNull()
  })

  it('leaves the download on the original', () => {
    expect(mainOutput('image_to_3d', [meshopt, core, glb])).toBe(glb)
  })
})

// What a task's kind means to the page: which input the create form asks for, which of
// a finished task's outputs is its result, and how that output is shown. Pure functions,
// so the choices are unit-tested without a browser.
import { taskThumbnailUrl, thumbnailUrl } from '../api/client'
import type { CatalogModel, Output, Task, TaskKind } from '../api/types'

/** The kinds in the order the model picker groups them. */
export const KINDS: readonly TaskKind[] = ['image_to_3d', 'text_to_3d', 'text_to_image']

/** What the create form asks for: a picture, or a prompt. */
export type Input = 'picture' | 'prompt'

/** How a result is shown: in the 3D viewer, as an image, or only as a file to download. */
export type Display = 'model' | 'image' | 'file'

export function inputFor(kind: TaskKind): Input {
  return kind === 'image_to_3d' ? 'picture' : 'prompt'
}

/** The role of the output without which a task of this kind has not succeeded (the server's `main_role`). */
export function mainRole(kind: TaskKind): 'model' | 'image' {
  return kind === 'text_to_image' ? 'image' : 'model'
}

/** How an output is shown, from its role, then its format or content type. */
export function displayOf(output: Output): Display {
  if (output.role === 'model' && output.format === 'glb') return 'model'
  if (output.role === 'image' || output.role === 'preview') return output.content_type.startsWith('image/') || isImageFormat(output.format) ? 'image' : 'file'
  if (output.format === 'glb' || output.content_type === 'model/gltf-binary') return 'model'
  if (output.content_type.startsWith('image/')) return 'image'
  return 'file'
}

const isImageFormat = (format: string) => ['png', 'jpg', 'jpeg', 'webp', 'gif', 'avif'].includes(format)

/**
 * The output a finished task is about: the one with its kind's main role, else one that
 * can be shown the same way (a GLB for a 3D task, an image for an image task). A 3D
 * task's preview render is never taken for its model.
 */
export function mainOutput(kind: TaskKind, outputs: readonly Output[]): Output | null {
  const role = mainRole(kind)
  const wanted: Display = role === 'model' ? 'model' : 'image'
  return (
    outputs.find((o) => o.role === role && displayOf(o) === wanted) ??
    outputs.find((o) => o.role === role) ??
    outputs.find((o) => o.role !== 'preview' && displayOf(o) === wanted) ??
    null
  )
}

/** A compressed copy of the model (`model.meshopt.glb`) that can be fetched. */
const isCompressedVariant = (o: Output) =>
  o.role === 'variant' && o.metadata?.format === 'glb-meshopt' && !o.expired && Boolean(o.url)

/**
 * What the 3D viewer loads: the compressed copy of the model (meshopt, a fraction of the
 * size; the viewer ships its decoder) when the server made one and still holds it, else
 * the model itself. Downloads keep the original.
 */
export function viewerOutput(outputs: readonly Output[]): Output | null {
  return outputs.find(isCompressedVariant) ?? mainOutput('image_to_3d', outputs)
}

/**
 * Every picture a text-to-image task made (an API asked for `n` images answers several),
 * the main one first; a 3D task's preview render is not among them.
 */
export function madeImages(kind: TaskKind, outputs: readonly Output[]): Output[] {
  const main = mainOutput(kind, outputs)
  if (!main || kind !== 'text_to_image') return main ? [main] : []
  return [main, ...outputs.filter((o) => o !== main && o.role === 'image' && displayOf(o) === 'image')]
}

/** A file name for the download: `kiln-<last 8 of the id>.<format>`, `-2`, `-3` … after the first of several. */
export function downloadName(taskId: string, output: Output, index = 0): string {
  const format = output.format || output.name.split('.').pop() || 'bin'
  return `kiln-${taskId.slice(-8)}${index > 0 ? `-${index + 1}` : ''}.${format}`
}

/** The model the create form starts with: the default picture model, else any default, else the first usable one. */
export function initialModel(all: readonly CatalogModel[]): CatalogModel | null {
  const usable = all.filter((m) => m.available)
  return (
    usable.find((m) => m.default && m.kind === 'image_to_3d') ??
    usable.find((m) => m.default) ??
    usable[0] ??
    all[0] ??
    null
  )
}

/** The catalog grouped by kind (in the order of KINDS), the default first in each group. */
export function byKind(all: readonly CatalogModel[]): { kind: TaskKind; models: CatalogModel[] }[] {
  return KINDS.map((kind) => ({
    kind,
    models: all.filter((m) => m.kind === kind).sort((a, b) => Number(b.default) - Number(a.default)),
  })).filter((group) => group.models.length > 0)
}

/** A model's key in the picker: a name may serve two kinds (a channel can offer both). */
export const modelKey = (m: Pick<CatalogModel, 'name' | 'kind'>) => `${m.kind}:${m.name}`

/**
 * Seconds until a resting channel of the model takes tasks again: the soonest, when
 * none of its channels can take work now (the model waits on it); the longest of those
 * resting otherwise (only a note). `null` when no channel rests.
 */
export function restingFor(model: CatalogModel): number | null {
  const resting = (model.channels ?? []).map((c) => c.resting_for).filter((s): s is number => typeof s === 'number' && s > 0)
  if (resting.length === 0) return null
  return model.available ? Math.max(...resting) : Math.min(...resting)
}

/**
 * The small pictures a list may show for a task, best first; the list moves to the next
 * when one does not load. A succeeded 3D task's own preview render comes first (the
 * server's task thumbnail, from its `preview` output; a task finished before previews
 * existed has none), then the picture it was made from; a text-to-image task's is the
 * image it made. A task still running shows its input.
 */
export function thumbnailsOf(task: Pick<Task, 'id' | 'kind' | 'status' | 'picture'>): string[] {
  const made = task.status === 'succeeded' ? [taskThumbnailUrl(task.id)] : []
  const input = task.picture?.url ? [thumbnailUrl(task.picture.id)] : []
  return [...made, ...input]
}

/** The first of `thumbnailsOf`, or null. */
export function thumbnailOf(task: Pick<Task, 'id' | 'kind' | 'status' | 'picture'>): string | null {
  return thumbnailsOf(task)[0] ?? null
}

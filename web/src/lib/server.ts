// What the page learns from the server once per visit: the input limits and the model
// catalog. Both fall back to safe values when the server cannot be asked.
import { ref } from 'vue'
import { api } from '../api/client'
import type { CatalogModel } from '../api/types'
import { DEFAULT_LIMITS, type UploadLimits } from './validate'

export const limits = ref<UploadLimits>(DEFAULT_LIMITS)
export const models = ref<CatalogModel[] | null>(null)

let loaded: Promise<void> | null = null

export function loadServerInfo(): Promise<void> {
  loaded ??= Promise.all([
    api.limits().then(
      (l) => void (limits.value = l.upload),
      () => undefined,
    ),
    api.catalog().then(
      (c) => void (models.value = c.models),
      () => void (models.value = []),
    ),
  ]).then(() => undefined)
  return loaded
}

/** The models for a kind of input, the default first. */
export function modelsFor(kinds: readonly string[], all: readonly CatalogModel[]): CatalogModel[] {
  return all.filter((m) => kinds.includes(m.kind)).sort((a, b) => Number(b.default) - Number(a.default))
}

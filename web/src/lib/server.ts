// What the page learns from the server: the input limits (once per visit) and the model
// catalog (again each time the create page opens, since a channel's health and rest
// change). Both fall back to safe values when the server cannot be asked.
import { ref } from 'vue'
import { api } from '../api/client'
import type { CatalogModel } from '../api/types'
import { DEFAULT_LIMITS, type UploadLimits } from './validate'

export const limits = ref<UploadLimits>(DEFAULT_LIMITS)
export const models = ref<CatalogModel[] | null>(null)

let loaded: Promise<void> | null = null

function loadCatalog(): Promise<void> {
  return api.catalog().then(
    (c) => void (models.value = c.models),
    () => void (models.value ??= []),
  )
}

/** Limits and catalog on the first call; later calls ask for the catalog again. */
export function loadServerInfo(): Promise<void> {
  if (loaded) {
    void loadCatalog()
    return loaded
  }
  loaded = Promise.all([
    api.limits().then(
      (l) => void (limits.value = l.upload),
      () => undefined,
    ),
    loadCatalog(),
  ]).then(() => undefined)
  return loaded
}

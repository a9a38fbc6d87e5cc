// The download menu's rows and the making of a format the server does not hold yet
// (`?format=`, docs/api.md). A format is asked for once per task page however many parts
// of the page want it (the menu's row, the AR button's USDZ): the flight is shared, and
// its state is reactive so that each part shows it.
import { reactive } from 'vue'
import { ApiError, askFormat, type FormatAnswer } from '../api/client'
import type { FormatEntry } from '../api/types'

/** The formats the page has a label for (`downloads.formats.<id>`), in the server's order. */
export const FORMAT_IDS = [
  'glb',
  'glb-meshopt',
  'glb-core',
  'lod',
  'preview',
  'obj',
  'stl',
  'stl-mm',
  'ply',
  'usdz',
  'cutout',
  'position-map',
] as const

/** The translation key of a format's label; null for a format this page does not know (its file name is shown). */
export function labelKey(format: string): string | null {
  return (FORMAT_IDS as readonly string[]).includes(format) ? `downloads.formats.${format}` : null
}

/** The name a downloaded file gets: the task's id, then the file's own name (`{id}-model.stl`). */
export function downloadFileName(taskId: string, file: string): string {
  return `${taskId}-${file}`
}

/** The ready entry of a format, with its URL; null when it is not stored (yet). */
export function readyFormat(formats: readonly FormatEntry[] | undefined, format: string): FormatEntry | null {
  const entry = formats?.find((f) => f.format === format)
  return entry && entry.status === 'ready' && entry.url ? entry : null
}

/** Codes after which asking again changes nothing: the server keeps the failure. */
const LASTING = ['conversion_failed', 'model_too_large', 'artifact_expired', 'no_model', 'unknown_format', 'format_not_applicable']
export const isLasting = (error: ApiError) => LASTING.includes(error.code)

/** 503 `converter_busy` answers in a row before giving up and saying so. */
export const BUSY_TRIES = 20

export interface PrepareOptions {
  ask?: (taskId: string, format: string, signal?: AbortSignal) => Promise<FormatAnswer>
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>
  signal?: AbortSignal
}

function wait(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new ApiError('aborted', 'aborted', 0))
    const timer = setTimeout(resolve, ms)
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(timer)
        reject(new ApiError('aborted', 'aborted', 0))
      },
      { once: true },
    )
  })
}

/**
 * Asks for `format` until the server holds it: a 202 (being made) or a 503 (too many
 * conversions waiting) is asked again after its `Retry-After`; resolves once the
 * answer is the 303. Rejects with the server's error (422, 410…), with the last
 * `converter_busy` after BUSY_TRIES of them, or with `aborted`.
 */
export async function prepare(taskId: string, format: string, options: PrepareOptions = {}): Promise<void> {
  const ask = options.ask ?? askFormat
  const sleep = options.sleep ?? wait
  let busy = 0
  for (;;) {
    const answer = await ask(taskId, format, options.signal)
    if (answer.kind === 'ready') return
    if (answer.kind === 'busy') {
      busy += 1
      if (busy >= BUSY_TRIES) throw answer.error
    } else {
      busy = 0
    }
    await sleep(Math.max(1, answer.retryAfter) * 1000, options.signal)
  }
}

const key = (taskId: string, format: string) => `${taskId}\n${format}`
const flights = new Map<string, { promise: Promise<void>; controller: AbortController }>()

/** Formats being asked for now, and the last failure of each (`taskId\nformat`). */
export const preparing = reactive(new Set<string>())
export const failures = reactive(new Map<string, ApiError>())

export const isPreparing = (taskId: string, format: string) => preparing.has(key(taskId, format))
export const failureOf = (taskId: string, format: string) => failures.get(key(taskId, format)) ?? null

/**
 * `prepare`, shared: a second call for the same task and format while the first runs
 * gets the same promise. A failure is kept in `failures` until the next try.
 */
export function prepareOnce(taskId: string, format: string, options: Omit<PrepareOptions, 'signal'> = {}): Promise<void> {
  const k = key(taskId, format)
  const running = flights.get(k)
  if (running) return running.promise
  const controller = new AbortController()
  failures.delete(k)
  preparing.add(k)
  const promise = prepare(taskId, format, { ...options, signal: controller.signal })
    .catch((err: unknown) => {
      const error = err instanceof ApiError ? err : new ApiError('unknown', String(err), 0)
      if (error.code !== 'aborted') failures.set(k, error)
      throw error
    })
    .finally(() => {
      flights.delete(k)
      preparing.delete(k)
    })
  flights.set(k, { promise, controller })
  return promise
}

/** Stops asking for a task's formats (its page was left) and forgets its failures. */
export function stopPreparing(taskId: string): void {
  for (const [k, flight] of flights) {
    if (k.startsWith(`${taskId}\n`)) flight.controller.abort()
  }
  for (const k of failures.keys()) {
    if (k.startsWith(`${taskId}\n`)) failures.delete(k)
  }
}

// The page's only way to the server: same-origin calls to the native API. Errors come
// back as ApiError with the server's stable code, so the page can say them in the
// reader's language (see lib/errors.ts).
//
// Signed in, the page is authenticated by the session cookie (HttpOnly: the page never
// sees it). Every request other than GET carries the session's CSRF token in
// `X-CSRF-Token` (from sign-in or `GET /api/v1/me`, kept here by lib/session.ts); a
// `csrf_failed` answer makes the page ask for the token again and retry once. A 401
// `unauthorized` is reported to the handler the router installs, which sends the person
// to the sign-in page and back after.
import type {
  CatalogModel,
  Delivery,
  Limits,
  Picture,
  PicturePage,
  StatusView,
  Task,
  TaskPage,
  TaskKind,
  TaskResult,
} from './types'

export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
    /** Seconds, from `Retry-After` (503 queue full, 429 limits). */
    readonly retryAfter: number | null = null,
    /** The envelope's `details` (e.g. `balance` and `price` of `insufficient_quota`). */
    readonly details: Record<string, unknown> | null = null,
  ) {
    super(message)
    this.name = 'ApiError'
  }
}

/** Turns a non-2xx answer (or a network failure) into an ApiError. */
export function errorFrom(status: number, body: string, retryAfter: string | null): ApiError {
  const seconds = retryAfter !== null && /^\d+$/.test(retryAfter.trim()) ? Number(retryAfter.trim()) : null
  try {
    const parsed: unknown = JSON.parse(body)
    if (parsed && typeof parsed === 'object' && 'error' in parsed) {
      const error = (parsed as { error: { code?: unknown; message?: unknown; details?: unknown } }).error
      if (typeof error.code === 'string') {
        const details =
          error.details && typeof error.details === 'object' && !Array.isArray(error.details)
            ? (error.details as Record<string, unknown>)
            : null
        return new ApiError(error.code, typeof error.message === 'string' ? error.message : '', status, seconds, details)
      }
    }
  } catch {
    // Not the JSON envelope (a proxy's error page, say): fall through.
  }
  return new ApiError(status === 0 ? 'network_error' : 'http_error', body.slice(0, 200), status, seconds)
}

let csrfToken: string | null = null
let onUnauthorized: ((error: ApiError) => void) | null = null
let refreshCsrf: (() => Promise<void>) | null = null

/** The session's CSRF token, sent with every request that is not a GET; null when signed out. */
export function setCsrfToken(token: string | null): void {
  csrfToken = token
}

export function currentCsrfToken(): string | null {
  return csrfToken
}

/** Called on a 401 `unauthorized` (the session ended or never was). */
export function setUnauthorizedHandler(handler: ((error: ApiError) => void) | null): void {
  onUnauthorized = handler
}

/** Asks for the session's CSRF token again (after a `csrf_failed`). */
export function setCsrfRefresher(refresher: (() => Promise<void>) | null): void {
  refreshCsrf = refresher
}

/** The headers of a request that may change something: the CSRF token when signed in. */
export function writeHeaders(method: string): Record<string, string> {
  return method.toUpperCase() !== 'GET' && method.toUpperCase() !== 'HEAD' && csrfToken ? { 'X-CSRF-Token': csrfToken } : {}
}

/**
 * One call to the API. A 204 (or an empty body) resolves to `undefined`. Options:
 * `quiet401` keeps a 401 from reaching the sign-in redirect (sign-in itself, the
 * password change, whose 401s mean wrong credentials).
 */
export async function request<T>(path: string, init?: RequestInit, options: { quiet401?: boolean } = {}): Promise<T> {
  const method = (init?.method ?? 'GET').toUpperCase()
  const send = () =>
    fetch(path, {
      ...init,
      credentials: 'same-origin',
      headers: { Accept: 'application/json', ...writeHeaders(method), ...((init?.headers as Record<string, string>) ?? {}) },
    })
  let response: Response
  try {
    response = await send()
    if (response.status === 403 && method !== 'GET' && refreshCsrf) {
      const text = await response.clone().text()
      if (errorFrom(403, text, null).code === 'csrf_failed') {
        await refreshCsrf().catch(() => undefined)
        response = await send()
      }
    }
  } catch (err) {
    throw new ApiError('network_error', String(err), 0)
  }
  const text = await response.text()
  if (!response.ok) {
    const error = errorFrom(response.status, text, response.headers.get('Retry-After'))
    if (response.status === 401 && error.code === 'unauthorized' && !options.quiet401) onUnauthorized?.(error)
    throw error
  }
  if (response.status === 204 || text.trim() === '') return undefined as T
  return JSON.parse(text) as T
}

/** A JSON body sent with `method` (POST unless said). */
export const json = (body: unknown, method = 'POST'): RequestInit => ({
  method,
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify(body),
})

export const api = {
  catalog: () => request<{ models: CatalogModel[] }>('/api/v1/catalog'),
  limits: () => request<Limits>('/api/v1/limits'),
  task: (id: string) => request<Task>(`/api/v1/tasks/${encodeURIComponent(id)}`),
  status: (id: string) => request<StatusView>(`/api/v1/tasks/${encodeURIComponent(id)}/status`),
  result: (id: string) => request<TaskResult>(`/api/v1/tasks/${encodeURIComponent(id)}/result`),
  cancel: (id: string) => request<Task>(`/api/v1/tasks/${encodeURIComponent(id)}`, { method: 'DELETE' }),
  /** The webhook deliveries of the task's end, each with its attempts. */
  webhooks: (id: string) => request<{ items: Delivery[] }>(`/api/v1/tasks/${encodeURIComponent(id)}/webhooks`),
  tasks: (query: { status?: string; picture_id?: string; cursor?: string | null; limit?: number }) => {
    const params = new URLSearchParams()
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== '') params.set(key, String(value))
    }
    return request<TaskPage>(`/api/v1/tasks?${params}`)
  },
  picture: (id: string) => request<Picture>(`/api/v1/pictures/${encodeURIComponent(id)}`),
  pictures: (offset: number, limit: number) => request<PicturePage>(`/api/v1/pictures?offset=${offset}&limit=${limit}`),
  createFromPicture: (pictureId: string, model: string | null) =>
    request<Task>('/api/v1/tasks', json({ picture_id: pictureId, model })),
  /** A prompt task; `kind` tells text-to-3D from text-to-image when a model name serves both. */
  createFromPrompt: (prompt: string, model: string | null, kind?: TaskKind) =>
    request<Task>('/api/v1/tasks', json(kind ? { prompt, model, kind } : { prompt, model })),
}

/** `GET /api/v1/tasks/{id}/result?format=…`: a 3D task's model in another format. */
export function formatUrl(taskId: string, format: string): string {
  return `/api/v1/tasks/${encodeURIComponent(taskId)}/result?format=${encodeURIComponent(format)}`
}

/**
 * What `?format=` answered: `ready` (303 to the stored file: the result lists it now),
 * `pending` (202: being made; ask again after `retryAfter` seconds) or `busy` (503
 * `converter_busy`: too many conversions waiting; ask again later). Anything else (422
 * `conversion_failed` or `model_too_large`, 410, a network failure…) is thrown as an
 * ApiError.
 */
export type FormatAnswer = { kind: 'ready' } | { kind: 'pending'; retryAfter: number } | { kind: 'busy'; retryAfter: number; error: ApiError }

/**
 * Asks for a format once. The redirect is not followed (`redirect: 'manual'`): following
 * it would download the whole file only to learn that it exists; the browser shows the
 * 303 as an `opaqueredirect` response. A client that follows anyway (status 200) or
 * shows the 303 itself means the same.
 */
export async function askFormat(taskId: string, format: string, signal?: AbortSignal): Promise<FormatAnswer> {
  let response: Response
  try {
    response = await fetch(formatUrl(taskId, format), {
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
      redirect: 'manual',
      signal,
    })
  } catch (err) {
    if (signal?.aborted) throw new ApiError('aborted', 'aborted', 0)
    throw new ApiError('network_error', String(err), 0)
  }
  if (response.type === 'opaqueredirect' || response.status === 303 || response.status === 200) return { kind: 'ready' }
  const text = await response.text().catch(() => '')
  const retryAfter = response.headers.get('Retry-After')
  const seconds = retryAfter !== null && /^\d+$/.test(retryAfter.trim()) ? Number(retryAfter.trim()) : 2
  if (response.status === 202) return { kind: 'pending', retryAfter: seconds }
  const error = errorFrom(response.status, text, retryAfter)
  if (response.status === 503 && error.code === 'converter_busy') return { kind: 'busy', retryAfter: seconds, error }
  if (response.status === 401 && error.code === 'unauthorized') onUnauthorized?.(error)
  throw error
}

/** A stored picture's small copy (at most 320 px), for lists. */
export function thumbnailUrl(pictureId: string): string {
  return `/api/v1/pictures/${encodeURIComponent(pictureId)}/thumbnail`
}

/** A small copy of the picture a task made (its image, else its preview render), for lists. */
export function taskThumbnailUrl(taskId: string): string {
  return `/api/v1/tasks/${encodeURIComponent(taskId)}/thumbnail`
}

export function eventsUrl(id: string, after: number): string {
  const base = `/api/v1/tasks/${encodeURIComponent(id)}/events`
  return after > 0 ? `${base}?after=${after}` : base
}

/**
 * Uploads a picture as a new task with XMLHttpRequest rather than fetch, because only it
 * reports upload progress: a 10 MB picture over a slow link takes a while.
 */
export function createFromFile(
  file: File,
  model: string | null,
  onProgress: (fraction: number) => void,
): { promise: Promise<Task>; abort: () => void } {
  const xhr = new XMLHttpRequest()
  const promise = new Promise<Task>((resolve, reject) => {
    const form = new FormData()
    form.append('image', file, file.name)
    if (model) form.append('model', model)
    xhr.open('POST', '/api/v1/tasks')
    xhr.setRequestHeader('Accept', 'application/json')
    for (const [name, value] of Object.entries(writeHeaders('POST'))) xhr.setRequestHeader(name, value)
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && e.total > 0) onProgress(e.loaded / e.total)
    }
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(JSON.parse(xhr.responseText) as Task)
        } catch (err) {
          reject(new ApiError('http_error', String(err), xhr.status))
        }
      } else {
        const error = errorFrom(xhr.status, xhr.responseText, xhr.getResponseHeader('Retry-After'))
        if (xhr.status === 401 && error.code === 'unauthorized') onUnauthorized?.(error)
        reject(error)
      }
    }
    xhr.onerror = () => reject(new ApiError('network_error', 'network error', 0))
    xhr.onabort = () => reject(new ApiError('aborted', 'aborted', 0))
    xhr.send(form)
  })
  return { promise, abort: () => xhr.abort() }
}

/**
 * File URLs in API answers are absolute, built from the server's `public_url`. When the
 * page was opened under another name for the same server (localhost vs 127.0.0.1, a
 * tunnel's domain), fetching them would be cross-origin and need CORS; a URL under the
 * server's own base (known from the task's `links.self`) is therefore made relative to
 * the page. URLs elsewhere (object storage) are kept as they are.
 */
export function sameServerUrl(url: string, selfLink: string | null | undefined, pageOrigin: string): string {
  if (!selfLink) return url
  const marker = selfLink.indexOf('/api/v1/')
  if (marker < 0) return url
  const base = selfLink.slice(0, marker + 1)
  if (!url.startsWith(base)) return url
  return `${pageOrigin}/${url.slice(base.length)}`
}

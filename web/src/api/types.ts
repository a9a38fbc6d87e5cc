// The shapes of kiln's native API that the page uses (docs/api.md). Only the fields the
// page reads are listed; the server may send more.

export type TaskStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'canceled'
export type TaskKind = 'image_to_3d' | 'text_to_3d' | 'text_to_image'

export interface ErrorInfo {
  code: string
  message: string
}

export interface Task {
  id: string
  kind: TaskKind
  model: string
  status: TaskStatus
  progress: number
  stage: string | null
  queue_position: number | null
  prompt: string | null
  picture: { id: string; url: string | null } | null
  error: ErrorInfo | null
  created_at: string
  started_at: string | null
  finished_at: string | null
  generation_time: number | null
  links: { self: string; status: string; result: string; events: string }
}

export interface TaskPage {
  items: Task[]
  next_cursor: string | null
}

export interface StatusView {
  id: string
  status: TaskStatus
  progress: number
  stage: string | null
  queue_position: number | null
  error: ErrorInfo | null
}

export interface Output {
  name: string
  role: string
  url: string | null
  format: string
  content_type: string
  size: number
  expired: boolean
  metadata: Record<string, unknown>
}

export interface TaskResult {
  id: string
  status: TaskStatus
  outputs: Output[]
  metadata: {
    format?: string | null
    size?: number | null
    generation_time?: number | null
    provider?: Record<string, unknown> | null
  } & Record<string, unknown>
  expired: boolean
  error: ErrorInfo | null
}

export interface Picture {
  id: string
  url: string | null
  format: string
  width: number
  height: number
  size: number
  original_name: string | null
  created_at: string
  expired: boolean
  links?: { self: string; tasks: string }
}

export interface PicturePage {
  items: Picture[]
  total: number
  next_offset: number | null
}

export interface CatalogChannel {
  name: string
  provider: string
  /** Enabled, healthy and not resting. */
  available: boolean
  /** A cloud API: the job leaves this machine and may be billed by the provider. */
  cloud: boolean
  /** Seconds until the channel takes new tasks again, while its circuit breaker rests it. */
  resting_for: number | null
}

export interface CatalogModel {
  name: string
  kind: TaskKind
  description: string
  default: boolean
  available: boolean
  /** Every channel serving it is a cloud API. */
  cloud: boolean
  channels: CatalogChannel[]
}

export interface Limits {
  upload: {
    max_bytes: number
    formats: string[]
    max_pixels: number
    max_side: number
    max_prompt_chars: number
    /** The most memory one picture's decode may take, estimated from its header. */
    max_decode_memory: number
  }
}

/** The event kinds of `GET /api/v1/tasks/{id}/events`. */
export const EVENT_KINDS = ['queued', 'processing', 'result', 'completed', 'failed', 'canceled'] as const
export type EventKind = (typeof EVENT_KINDS)[number]
export const TERMINAL_EVENTS: readonly EventKind[] = ['completed', 'failed', 'canceled']

/** One event of a task's log, as the stream delivers it (`data` parsed). */
export interface TaskEvent {
  kind: EventKind
  seq: number
  data: {
    status?: TaskStatus
    position?: number
    progress?: number
    stage?: string | null
    error?: ErrorInfo
    generation_time?: number | null
  } & Record<string, unknown>
}

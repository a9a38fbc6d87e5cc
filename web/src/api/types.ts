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
  /** The user who made it; null when made anonymously (open mode). */
  owner_id?: string | null
  /** Where its end is announced; null: no webhook, so no deliveries to show. */
  webhook_url?: string | null
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

/** Where a format of a 3D task's model stands (`ResultView.formats`, docs/api.md). */
export type FormatStatus = 'ready' | 'available' | 'pending' | 'failed'

/**
 * One format of a succeeded 3D task's model: `ready` (stored: `size` and `url`, the same
 * URL as its entry in `outputs`), `available` (`?format=` makes it), `pending` (being
 * made now) or `failed` (`error`, which `?format=` answers again at once).
 */
export interface FormatEntry {
  /** The format id: `glb`, `glb-meshopt`, `glb-core`, `lod`, `preview`, `obj`, `stl`, `stl-mm`, `ply`, `usdz`, `cutout`, `position-map`. */
  format: string
  /** The file's name (`model.stl`). */
  file: string
  content_type: string
  status: FormatStatus
  size?: number | null
  url?: string | null
  error?: ErrorInfo | null
}

export interface TaskResult {
  id: string
  status: TaskStatus
  outputs: Output[]
  /** Empty (or absent, from an older server) unless the task is a 3D task that succeeded. */
  formats?: FormatEntry[]
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

/** One try at sending a webhook delivery. */
export interface DeliveryAttempt {
  at: string
  /** The receiver's HTTP status; null when no answer came. */
  status_code: number | null
  /** What went wrong (at most 500 characters); null when delivered. */
  error: string | null
  duration_ms: number
}

export type DeliveryEvent = 'task.completed' | 'task.failed' | 'task.canceled'
export type DeliveryStatus = 'pending' | 'delivered' | 'failed'

/** A webhook delivery of a task's end (`GET /api/v1/tasks/{id}/webhooks`, oldest first). */
export interface Delivery {
  id: string
  event: DeliveryEvent
  url: string
  status: DeliveryStatus
  /** When the next attempt is due, while pending. */
  next_attempt_at: string | null
  created_at: string
  finished_at: string | null
  attempts: DeliveryAttempt[]
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

// Accounts and the console (docs/accounts.md). Times are RFC 3339 strings; credits are
// whole numbers.

export type Role = 'admin' | 'user'
export type AuthMode = 'open' | 'tokens'

export interface User {
  id: string
  username: string
  role: Role
  balance: number
  /** Queued + running tasks at once; null: the configured limit. */
  max_active: number | null
  disabled: boolean
  created_at: string
  updated_at: string
}

/** `GET /api/v1/me`: never a 401; `user` is null for an anonymous visitor. */
export interface Me {
  auth_mode: AuthMode
  user: User | null
  csrf_token: string | null
}

export interface SignedIn {
  user: User
  csrf_token: string
  expires_at: string
}

export interface Token {
  id: string
  user_id: string
  name: string
  /** The last four characters of the token text. */
  hint: string
  models: string[] | null
  spend_cap: number | null
  spent: number
  rate_per_minute: number | null
  webhook_url: string | null
  expires_at: string | null
  last_used_at: string | null
  revoked_at: string | null
  created_at: string
}

export interface NewToken {
  name: string
  models?: string[]
  spend_cap?: number
  rate_per_minute?: number
  webhook_url?: string
  /** RFC 3339. */
  expires_at?: string
}

/** The answer to a token's creation: `token` is the only time its text is seen. */
export interface IssuedToken {
  token: string
  item: Token
}

export type UsageOutcome = 'succeeded' | 'failed' | 'canceled' | 'pending'

export interface UsageRecord {
  task_id: string
  user_id: string | null
  username: string | null
  token_id: string | null
  token_name: string | null
  channel: string
  model: string
  kind: string
  reserved: number
  charged: number | null
  outcome: Exclude<UsageOutcome, 'pending'> | null
  error_code: string | null
  queue_ms: number | null
  run_ms: number | null
  upstream_id: string | null
  created_at: string
  finished_at: string | null
}

export interface UsageTotals {
  tasks: number
  succeeded: number
  failed: number
  canceled: number
  charged: number
}

export interface UsagePage {
  items: UsageRecord[]
  totals: UsageTotals
  next_cursor: string | null
}

export interface UsageFilters {
  user?: string
  token?: string
  model?: string
  channel?: string
  outcome?: UsageOutcome | ''
  /** RFC 3339. */
  from?: string
  to?: string
}

/** `GET /api/v1/admin/users?offset&limit`: a page, in the order users were made. */
export interface UserPage {
  items: User[]
  /** Users in all. */
  total: number
}

export interface UserChanges {
  role?: Role
  disabled?: boolean
  max_active?: number | null
  password?: string
}

/** Exactly one of `delta` and `set`. */
export type BalanceChange = ({ delta: number; set?: never } | { set: number; delta?: never }) & { note?: string }

export interface Price {
  model: string
  per_task: number
  per_image: number
}

export interface PriceList {
  items: Price[]
  models: { name: string; kind: string }[]
}

export interface AuditEntry {
  id: number
  at: string
  actor_id: string | null
  actor: string | null
  action: string
  target: string | null
  detail: unknown
  ip: string | null
}

/** `GET /api/v1/admin/audit?actor&action&offset&limit`: newest first. */
export interface AuditPage {
  items: AuditEntry[]
  /** Entries the filters select in all. */
  total: number
}

/**
 * `GET /api/v1/admin/dashboard?hours=N`: rows since `since`, in UTC hours (`hour` is the
 * hour's start). Hours without tasks have no rows; lib/charts.ts fills them in.
 */
export interface Dashboard {
  since: string
  /** `outcome` is `succeeded`, `failed`, `canceled` or `pending` (not ended yet). */
  tasks: { hour: string; model: string; outcome: string; count: number }[]
  credits: { hour: string; credits: number }[]
  queue: { channel: string; queued: number; running: number }[]
  /** Channels with tasks that ended in the period, with their run-time percentiles. */
  run_time: { channel: string; tasks: number; p50_ms: number; p95_ms: number }[]
}

/** How a provider setting is entered: `list` is an array of text, `duration` text like `30s`. */
export type FieldKind = 'string' | 'url' | 'secret' | 'int' | 'number' | 'bool' | 'json' | 'enum' | 'list' | 'duration'

/** One field of a provider type's form. `secret` is the channel's key; the others go under `options`. */
export interface ChannelField {
  name: string
  kind: FieldKind
  required: boolean
  /** What is used when the field is left out (null: nothing). */
  default: unknown
  /** The choices of an `enum`. */
  options?: string[]
  help: string
}

/** `GET /api/v1/admin/channel-types` → `{items}`: a provider type and its form. */
export interface ChannelType {
  type: string
  title: string
  /** The kinds its models may have. */
  kinds: TaskKind[]
  fields: ChannelField[]
  /** The addresses it knows, by label (the default first). */
  base_urls: { label: string; url: string }[]
  default_base_url: string | null
}

export interface ChannelModel {
  name: string
  kind: string
  upstream?: string | null
  description?: string | null
}

/** A channel's configuration as the API sends and takes it (the key masked when sent). */
export interface ChannelConfig {
  name: string
  type: string
  models: ChannelModel[]
  /** Sent: a mask (`••••1234`, `••••`) or null. Taken: a new key; absent, null or a mask keeps it; `""` removes it. */
  secret?: string | null
  options: Record<string, unknown>
  defaults: Record<string, unknown>
  overrides: Record<string, unknown>
  priority: number
  weight: number
  max_concurrency: number
  max_queue: number
  /** A duration such as `10m`; null: the server's task deadline. */
  deadline?: string | null
  enabled: boolean
  client_keys: boolean
  /** Failed submissions in a row that rest the channel (0: never), and for how long. */
  breaker?: { failures: number; cooldown: string }
  [other: string]: unknown
}

export interface ChannelStats {
  /** Waiting and running now. */
  queued: number
  running: number
  /** Ended in the last hour, by outcome. */
  succeeded?: number
  failed?: number
  canceled?: number
  /** succeeded ÷ (succeeded + failed) over the last hour, 0–1; null when none ended. */
  success_rate: number | null
  p50_ms: number | null
  p95_ms: number | null
  last_error: { task_id: string; code: string; message: string; at: string } | null
}

/** A channel of the live set (or a stored one that could not be built). */
export interface ChannelView {
  /** Stored channels only. */
  id: string | null
  name: string
  type: string
  /** `file`: from kiln.toml, read-only here. */
  source: 'file' | 'database'
  read_only: boolean
  /** In the live set; a stored channel that cannot be built is not (see `problem`). */
  live: boolean
  problem: string | null
  enabled: boolean
  /** Live, enabled, healthy and not resting. */
  available: boolean
  config: ChannelConfig
  created_at: string | null
  updated_at: string | null
  stats: ChannelStats
}

/** `DELETE /api/v1/admin/channels/{name}`: what became of its waiting tasks. */
export interface DeletedChannel {
  channel: ChannelView
  /** Moved to another channel serving their model. */
  moved: { task: string; to: string }[]
  /** Failed `channel_deleted`: no other channel serves their model. */
  failed: string[]
}

export interface ChannelTest {
  ok: boolean
  message: string
}

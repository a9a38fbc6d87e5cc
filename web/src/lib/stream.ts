// Follows one task's event log (GET /api/v1/tasks/{id}/events) and hands each event to
// the page exactly once, in order, however the connection behaves:
//
// - The browser's EventSource reconnects by itself after a drop and sends
//   `Last-Event-ID`; the server replays what was missed from its log.
// - When the browser gives up (an HTTP error, a proxy's page), this class reconnects
//   itself with `?after=<last seq>`, with a growing delay.
// - Replayed or duplicated events (seq ≤ the last one seen) are dropped, so a replay
//   after a reload or a reconnection never moves the page backwards.
// - After `maxFailures` failed connections in a row without an event, or when the
//   browser has no EventSource at all, it polls `/status` instead (seed 004 §4.3).
// - It stops after the terminal event (`completed`, `failed`, `canceled`), before the
//   server closes the stream, so the end is not mistaken for a drop.
import { EVENT_KINDS, TERMINAL_EVENTS, type EventKind, type StatusView, type TaskEvent } from '../api/types'

/** The part of EventSource this class uses, so tests can pass a fake one. */
export interface EventSourceLike {
  readonly readyState: number
  onopen: ((event: Event) => void) | null
  onerror: ((event: Event) => void) | null
  addEventListener(type: string, listener: (event: MessageEvent) => void): void
  close(): void
}

export type Transport = 'connecting' | 'live' | 'reconnecting' | 'polling' | 'closed'

const CLOSED = 2

export interface TaskStreamOptions {
  taskId: string
  /** Start after this seq (0: the whole log). */
  after?: number
  onEvent: (event: TaskEvent) => void
  /** A `/status` snapshot, while polling. */
  onStatus?: (status: StatusView) => void
  onTransport?: (transport: Transport) => void
  /** `null` when SSE is impossible. Defaults to the browser's EventSource. */
  createEventSource?: ((url: string) => EventSourceLike) | null
  fetchStatus: (taskId: string) => Promise<StatusView>
  eventsUrl: (taskId: string, after: number) => string
  maxFailures?: number
  /** Delay before the n-th reconnection this class makes itself (n from 1). */
  retryDelay?: (attempt: number) => number
  pollInterval?: number
}

export function defaultEventSource(): ((url: string) => EventSourceLike) | null {
  return typeof EventSource === 'function' ? (url) => new EventSource(url) : null
}

export class TaskStream {
  lastSeq: number
  transport: Transport = 'connecting'
  private source: EventSourceLike | null = null
  private failures = 0
  private timer: ReturnType<typeof setTimeout> | null = null
  private stopped = false
  private readonly options: Required<Omit<TaskStreamOptions, 'onStatus' | 'onTransport' | 'after'>> &
    Pick<TaskStreamOptions, 'onStatus' | 'onTransport'>

  constructor(options: TaskStreamOptions) {
    this.lastSeq = options.after ?? 0
    this.options = {
      maxFailures: 4,
      retryDelay: (attempt) => Math.min(1000 * 2 ** (attempt - 1), 10_000),
      pollInterval: 2000,
      ...options,
      createEventSource: options.createEventSource === undefined ? defaultEventSource() : options.createEventSource,
    }
  }

  start(): void {
    if (this.options.createEventSource) this.connect()
    else this.poll()
  }

  stop(): void {
    this.stopped = true
    this.closeSource()
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    this.setTransport('closed')
  }

  private setTransport(transport: Transport): void {
    if (this.transport === transport) return
    this.transport = transport
    this.options.onTransport?.(transport)
  }

  private closeSource(): void {
    if (this.source) {
      this.source.onopen = null
      this.source.onerror = null
      this.source.close()
      this.source = null
    }
  }

  private connect(): void {
    const create = this.options.createEventSource
    if (this.stopped || !create) return
    this.closeSource()
    let source: EventSourceLike
    try {
      source = create(this.options.eventsUrl(this.options.taskId, this.lastSeq))
    } catch {
      this.poll()
      return
    }
    this.source = source
    source.onopen = () => this.setTransport('live')
    source.onerror = () => this.failed(source)
    for (const kind of EVENT_KINDS) {
      source.addEventListener(kind, (message) => this.receive(kind, message))
    }
  }

  private receive(kind: EventKind, message: MessageEvent): void {
    if (this.stopped) return
    let data: TaskEvent['data']
    try {
      data = JSON.parse(String(message.data)) as TaskEvent['data']
    } catch {
      return
    }
    const seq = typeof data.seq === 'number' ? data.seq : Number(message.lastEventId)
    if (!Number.isFinite(seq) || seq <= this.lastSeq) return
    this.lastSeq = seq
    this.failures = 0
    this.setTransport('live')
    this.options.onEvent({ kind, seq, data })
    if (TERMINAL_EVENTS.includes(kind)) this.stop()
  }

  private failed(source: EventSourceLike): void {
    if (this.stopped || source !== this.source) return
    this.failures += 1
    if (this.failures >= this.options.maxFailures) {
      this.closeSource()
      this.poll()
      return
    }
    this.setTransport('reconnecting')
    if (source.readyState === CLOSED) {
      // The browser gave up on this one (an error status, not an event stream).
      this.closeSource()
      this.timer = setTimeout(() => {
        this.timer = null
        this.connect()
      }, this.options.retryDelay(this.failures))
    }
    // Otherwise the browser is already reconnecting, with Last-Event-ID.
  }

  private poll(): void {
    if (this.stopped) return
    this.setTransport('polling')
    const tick = async () => {
      this.timer = null
      if (this.stopped) return
      try {
        const status = await this.options.fetchStatus(this.options.taskId)
        if (this.stopped) return
        this.options.onStatus?.(status)
        if (status.status === 'succeeded' || status.status === 'failed' || status.status === 'canceled') {
          this.stop()
          return
        }
      } catch {
        // A failed poll is retried at the next tick.
      }
      if (!this.stopped) this.timer = setTimeout(() => void tick(), this.options.pollInterval)
    }
    void tick()
  }
}

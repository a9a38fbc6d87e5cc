import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { StatusView, TaskEvent } from '../src/api/types'
import { TaskStream, type EventSourceLike, type Transport } from '../src/lib/stream'

/** A scriptable EventSource: the test plays the server and the browser's reconnection. */
class FakeSource implements EventSourceLike {
  static all: FakeSource[] = []
  readyState = 0
  onopen: ((event: Event) => void) | null = null
  onerror: ((event: Event) => void) | null = null
  closed = false
  private listeners = new Map<string, ((event: MessageEvent) => void)[]>()
  constructor(readonly url: string) {
    FakeSource.all.push(this)
  }
  addEventListener(type: string, listener: (event: MessageEvent) => void) {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener])
  }
  close() {
    this.closed = true
    this.readyState = 2
  }
  open() {
    this.readyState = 1
    this.onopen?.(new Event('open'))
  }
  emit(kind: string, seq: number, data: Record<string, unknown> = {}) {
    const message = new MessageEvent(kind, { data: JSON.stringify({ seq, ...data }), lastEventId: String(seq) })
    for (const listener of this.listeners.get(kind) ?? []) listener(message)
  }
  /** The connection drops; `browserRetries` says whether the browser reconnects itself. */
  drop(browserRetries: boolean) {
    this.readyState = browserRetries ? 0 : 2
    this.onerror?.(new Event('error'))
  }
}

const latest = () => FakeSource.all[FakeSource.all.length - 1]!

function setup(options: Partial<ConstructorParameters<typeof TaskStream>[0]> = {}) {
  const events: TaskEvent[] = []
  const transports: Transport[] = []
  const statuses: StatusView[] = []
  const stream = new TaskStream({
    taskId: 't1',
    eventsUrl: (id, after) => `/api/v1/tasks/${id}/events${after ? `?after=${after}` : ''}`,
    fetchStatus: async () => {
      throw new Error('not expected')
    },
    createEventSource: (url) => new FakeSource(url),
    onEvent: (e) => events.push(e),
    onTransport: (t) => transports.push(t),
    onStatus: (s) => statuses.push(s),
    ...options,
  })
  stream.start()
  return { stream, events, transports, statuses }
}

const seqs = (events: TaskEvent[]) => events.map((e) => e.seq)

beforeEach(() => {
  FakeSource.all = []
  vi.useFakeTimers()
})
afterEach(() => vi.useRealTimers())

describe('TaskStream', () => {
  it('delivers events in order, each once, and stops at the terminal event', () => {
    const { events, stream } = setup()
    const source = latest()
    expect(source.url).toBe('/api/v1/tasks/t1/events')
    source.open()
    source.emit('queued', 1, { position: 2 })
    source.emit('queued', 2, { position: 1 })
    source.emit('queued', 2, { position: 1 }) // a duplicate
    source.emit('processing', 3, { progress: 40, stage: 'meshing' })
    source.emit('completed', 4, { status: 'succeeded' })
    expect(seqs(events)).toEqual([1, 2, 3, 4])
    expect(events.map((e) => e.kind)).toEqual(['queued', 'queued', 'processing', 'completed'])
    expect(events[0]!.data.position).toBe(2)
    expect(source.closed).toBe(true)
    expect(stream.transport).toBe('closed')
    // The server closing the stream afterwards is not taken for a drop.
    source.drop(true)
    expect(FakeSource.all).toHaveLength(1)
  })

  it('ignores the replay after the browser reconnects with Last-Event-ID', () => {
    const { events, transports } = setup()
    const source = latest()
    source.open()
    source.emit('queued', 1, { position: 1 })
    source.emit('processing', 2, { progress: 10 })
    source.drop(true)
    expect(transports).toContain('reconnecting')
    // The browser reconnects on the same object; a server that replays too much is harmless.
    source.open()
    source.emit('processing', 2, { progress: 10 })
    source.emit('processing', 3, { progress: 60 })
    expect(seqs(events)).toEqual([1, 2, 3])
    expect(transports[transports.length - 1]).toBe('live')
    expect(FakeSource.all).toHaveLength(1)
  })

  it('reconnects itself with ?after=<last seq> when the browser gives up, and misses nothing', () => {
    const { events } = setup()
    const first = latest()
    first.open()
    first.emit('queued', 1)
    first.emit('processing', 2, { progress: 5 })
    first.drop(false)
    expect(first.closed).toBe(true)
    expect(FakeSource.all).toHaveLength(1)
    vi.advanceTimersByTime(1000)
    const second = latest()
    expect(FakeSource.all).toHaveLength(2)
    expect(second.url).toBe('/api/v1/tasks/t1/events?after=2')
    second.open()
    second.emit('processing', 3, { progress: 50 })
    second.emit('result', 4)
    second.emit('completed', 5)
    expect(seqs(events)).toEqual([1, 2, 3, 4, 5])
  })

  it('falls back to polling /status after repeated failures, and stops at the end', async () => {
    const answers: StatusView['status'][] = ['running', 'running', 'succeeded']
    const fetchStatus = vi.fn(async () => ({
      id: 't1',
      status: answers.shift() ?? 'succeeded',
      progress: 50,
      stage: 'meshing',
      queue_position: null,
      error: null,
    }))
    const { statuses, transports, stream } = setup({ fetchStatus, maxFailures: 3, pollInterval: 2000 })
    latest().drop(false)
    await vi.advanceTimersByTimeAsync(1000)
    latest().drop(false)
    await vi.advanceTimersByTimeAsync(2000)
    expect(FakeSource.all).toHaveLength(3)
    expect(fetchStatus).not.toHaveBeenCalled()
    latest().drop(false)
    expect(transports[transports.length - 1]).toBe('polling')
    await vi.advanceTimersByTimeAsync(0)
    expect(fetchStatus).toHaveBeenCalledTimes(1)
    await vi.advanceTimersByTimeAsync(2000)
    await vi.advanceTimersByTimeAsync(2000)
    expect(statuses.map((s) => s.status)).toEqual(['running', 'running', 'succeeded'])
    expect(stream.transport).toBe('closed')
    await vi.advanceTimersByTimeAsync(10_000)
    expect(fetchStatus).toHaveBeenCalledTimes(3)
    expect(FakeSource.all).toHaveLength(3)
  })

  it('counts failures only in a row: an event resets them', async () => {
    setup({ maxFailures: 2 })
    const source = latest()
    source.drop(true)
    source.open()
    source.emit('queued', 1)
    source.drop(true)
    expect(source.closed).toBe(false) // one failure since the last event, not two
    source.drop(true)
    expect(source.closed).toBe(true)
  })

  it('polls from the start when the browser has no EventSource', async () => {
    const fetchStatus = vi.fn(async () => ({
      id: 't1',
      status: 'queued' as const,
      progress: 0,
      stage: null,
      queue_position: 2,
      error: null,
    }))
    const { transports, statuses, stream } = setup({ createEventSource: null, fetchStatus })
    await vi.advanceTimersByTimeAsync(0)
    expect(transports).toEqual(['polling'])
    expect(statuses[0]?.queue_position).toBe(2)
    stream.stop()
    await vi.advanceTimersByTimeAsync(10_000)
    expect(fetchStatus).toHaveBeenCalledTimes(1)
  })

  it('starts after a given seq', () => {
    const { events } = setup({ after: 3 })
    const source = latest()
    expect(source.url).toBe('/api/v1/tasks/t1/events?after=3')
    source.emit('processing', 3)
    source.emit('processing', 4)
    expect(seqs(events)).toEqual([4])
  })
})

import { describe, expect, it } from 'vitest'
import type { Task, TaskEvent } from '../src/api/types'
import { applyEvent, applyStatus, fromTask } from '../src/lib/watch'

const task = (over: Partial<Task> = {}): Task => ({
  id: 't',
  kind: 'image_to_3d',
  model: 'relief',
  status: 'queued',
  progress: 0,
  stage: null,
  queue_position: 3,
  prompt: null,
  picture: null,
  error: null,
  created_at: '2026-01-01T00:00:00+00:00',
  started_at: null,
  finished_at: null,
  generation_time: null,
  links: { self: '', status: '', result: '', events: '' },
  ...over,
})

const ev = (kind: TaskEvent['kind'], seq: number, data: TaskEvent['data'] = {}): TaskEvent => ({ kind, seq, data })

describe('watch state', () => {
  it('follows a whole log: place in line, stages, progress, the end', () => {
    const log = [
      ev('queued', 1, { position: 3 }),
      ev('queued', 2, { position: 2 }),
      ev('queued', 3, { position: 1 }),
      ev('processing', 4, { progress: 0, stage: 'starting' }),
      ev('processing', 5, { progress: 45, stage: 'meshing' }),
      ev('result', 6),
      ev('completed', 7, { generation_time: 1.4 }),
    ]
    const seen: string[] = []
    let state = fromTask(task())
    for (const e of log) {
      state = applyEvent(state, e)
      seen.push(`${state.status}:${state.position ?? ''}:${state.stage ?? ''}:${state.progress}`)
    }
    expect(seen).toEqual([
      'queued:3::0',
      'queued:2::0',
      'queued:1::0',
      'running::starting:0',
      'running::meshing:45',
      'running::finishing:45',
      'succeeded::finishing:100',
    ])
    expect(state.generationTime).toBe(1.4)
  })

  it('replaying the log after a reload ends where the task is', () => {
    // The page loads the task (already at 60 %) and then replays the log from the start.
    let state = fromTask(task({ status: 'running', progress: 60, stage: 'texturing', queue_position: null }))
    for (const e of [ev('queued', 1, { position: 1 }), ev('processing', 2, { progress: 0 }), ev('processing', 3, { progress: 60, stage: 'texturing' })]) {
      state = applyEvent(state, e)
    }
    expect(state).toMatchObject({ status: 'running', progress: 60, stage: 'texturing', position: null })
  })

  it('never leaves a finished state', () => {
    let state = applyEvent(fromTask(task()), ev('failed', 2, { error: { code: 'no_foreground_object', message: 'No object found.' } }))
    expect(state.error?.code).toBe('no_foreground_object')
    state = applyEvent(state, ev('processing', 3, { progress: 10 }))
    state = applyStatus(state, { id: 't', status: 'running', progress: 10, stage: null, queue_position: null, error: null })
    expect(state.status).toBe('failed')
  })

  it('takes status snapshots while polling', () => {
    const state = applyStatus(fromTask(task()), { id: 't', status: 'queued', progress: 0, stage: null, queue_position: 2, error: null })
    expect(state.position).toBe(2)
  })
})

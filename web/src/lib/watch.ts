// What the task page shows, as a pure function of the task and the events or status
// snapshots that followed: one reducer for SSE and polling alike, so both paths show
// the same thing and tests can replay any sequence.
import type { ErrorInfo, StatusView, Task, TaskEvent, TaskStatus } from '../api/types'

export interface WatchState {
  status: TaskStatus
  /** 1-based place in the queue, while queued. */
  position: number | null
  progress: number
  stage: string | null
  error: ErrorInfo | null
  generationTime: number | null
}

export const isTerminal = (status: TaskStatus) => status === 'succeeded' || status === 'failed' || status === 'canceled'

export function fromTask(task: Task): WatchState {
  return {
    status: task.status,
    position: task.queue_position,
    progress: task.progress,
    stage: task.stage,
    error: task.error,
    generationTime: task.generation_time,
  }
}

export function applyEvent(state: WatchState, event: TaskEvent): WatchState {
  // A finished task never goes back (a stale event after the end changes nothing).
  if (isTerminal(state.status)) return state
  const d = event.data
  switch (event.kind) {
    case 'queued':
      return { ...state, status: 'queued', position: typeof d.position === 'number' ? d.position : state.position }
    case 'processing':
      return {
        ...state,
        status: 'running',
        position: null,
        progress: typeof d.progress === 'number' ? d.progress : state.progress,
        stage: d.stage ?? state.stage,
      }
    case 'result':
      return { ...state, status: 'running', position: null, stage: 'finishing' }
    case 'completed':
      return {
        ...state,
        status: 'succeeded',
        position: null,
        progress: 100,
        generationTime: typeof d.generation_time === 'number' ? d.generation_time : state.generationTime,
      }
    case 'failed':
      return { ...state, status: 'failed', position: null, error: d.error ?? { code: 'provider_error', message: '' } }
    case 'canceled':
      return { ...state, status: 'canceled', position: null }
  }
}

export function applyStatus(state: WatchState, status: StatusView): WatchState {
  if (isTerminal(state.status)) return state
  return {
    ...state,
    status: status.status,
    position: status.queue_position,
    progress: status.progress,
    stage: status.stage,
    error: status.error,
  }
}

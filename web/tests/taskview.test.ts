// The task page with a scripted server: the place in line, the stage and progress from
// the stream, and the 180-second notice with its two ways out.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createMemoryHistory, createRouter } from 'vue-router'
import type { Task } from '../src/api/types'
import { locale } from '../src/i18n'

const task = (over: Partial<Task> = {}): Task => ({
  id: 'task-1',
  kind: 'image_to_3d',
  model: 'relief',
  status: 'queued',
  progress: 0,
  stage: null,
  queue_position: 2,
  prompt: null,
  picture: { id: 'pic-1', url: 'http://kiln/files/pictures/pic-1.png' },
  error: null,
  created_at: '2026-11-25T10:00:00+00:00',
  started_at: null,
  finished_at: null,
  generation_time: null,
  links: { self: 'http://kiln/api/v1/tasks/task-1', status: '', result: '', events: '' },
  ...over,
})

const api = vi.hoisted(() => ({
  task: vi.fn(),
  status: vi.fn(),
  result: vi.fn(),
  cancel: vi.fn(),
  createFromPicture: vi.fn(),
  createFromPrompt: vi.fn(),
}))
vi.mock('../src/api/client', async (original) => ({ ...(await original<object>()), api }))

class FakeSource {
  static last: FakeSource | null = null
  readyState = 1
  onopen: ((e: Event) => void) | null = null
  onerror: ((e: Event) => void) | null = null
  listeners: Record<string, ((e: MessageEvent) => void)[]> = {}
  constructor(readonly url: string) {
    FakeSource.last = this
  }
  addEventListener(type: string, f: (e: MessageEvent) => void) {
    ;(this.listeners[type] ??= []).push(f)
  }
  close() {}
  emit(kind: string, seq: number, data: object) {
    const message = new MessageEvent(kind, { data: JSON.stringify({ seq, ...data }) })
    this.listeners[kind]?.forEach((f) => f(message))
  }
}

async function mountAt(id: string) {
  const TaskView = (await import('../src/views/TaskView.vue')).default
  const router = createRouter({
    history: createMemoryHistory(),
    routes: [
      { path: '/', component: { template: '<p/>' } },
      { path: '/tasks/:id', name: 'task', component: TaskView, props: true },
    ],
  })
  await router.push(`/tasks/${id}`)
  const wrapper = mount({ template: '<RouterView />' }, { global: { plugins: [router] } })
  await flushPromises()
  return { wrapper, router }
}

beforeEach(() => {
  vi.useFakeTimers()
  vi.stubGlobal('EventSource', FakeSource)
  locale.value = 'en'
  api.task.mockResolvedValue(task())
})
afterEach(() => {
  vi.useRealTimers()
  vi.unstubAllGlobals()
  vi.clearAllMocks()
})

describe('the task page', () => {
  it('shows the place in line, then the stage and progress from the stream', async () => {
    const { wrapper } = await mountAt('task-1')
    expect(wrapper.get('[data-testid="status-text"]').text()).toBe('2nd in line')
    expect(FakeSource.last?.url).toBe('/api/v1/tasks/task-1/events')
    FakeSource.last!.emit('queued', 2, { position: 1 })
    await flushPromises()
    expect(wrapper.get('[data-testid="status-text"]').text()).toBe('1st in line')
    FakeSource.last!.emit('processing', 3, { progress: 45, stage: 'meshing' })
    await flushPromises()
    expect(wrapper.get('[data-testid="status-text"]').text()).toBe('Building the shape')
    expect(wrapper.get('[data-testid="progress"]').attributes('aria-valuenow')).toBe('45')
    locale.value = 'zh-CN'
    await flushPromises()
    expect(wrapper.get('[data-testid="status-text"]').text()).toBe('正在构建形状')
  })

  it('says so after 180 s, and lets the person keep waiting or start again', async () => {
    const { wrapper, router } = await mountAt('task-1')
    await vi.advanceTimersByTimeAsync(179_000)
    expect(wrapper.find('[data-testid="slow"]').exists()).toBe(false)
    await vi.advanceTimersByTimeAsync(1_000)
    expect(wrapper.get('[data-testid="slow"]').text()).toContain('No result after 180 seconds')

    await wrapper.get('[data-testid="keep-waiting"]').trigger('click')
    expect(wrapper.find('[data-testid="slow"]').exists()).toBe(false)
    await vi.advanceTimersByTimeAsync(179_000)
    expect(wrapper.find('[data-testid="slow"]').exists()).toBe(false)
    await vi.advanceTimersByTimeAsync(1_000)
    expect(wrapper.find('[data-testid="slow"]').exists()).toBe(true)

    api.cancel.mockResolvedValue(task({ status: 'canceled' }))
    api.createFromPicture.mockResolvedValue(task({ id: 'task-2' }))
    await wrapper.get('[data-testid="slow-retry"]').trigger('click')
    await flushPromises()
    expect(api.cancel).toHaveBeenCalledWith('task-1')
    expect(api.createFromPicture).toHaveBeenCalledWith('pic-1', 'relief')
    expect(router.currentRoute.value.fullPath).toBe('/tasks/task-2')
  })

  it('does not warn about a task that finishes in time', async () => {
    const { wrapper } = await mountAt('task-1')
    api.result.mockResolvedValue({ id: 'task-1', status: 'succeeded', outputs: [], metadata: {}, expired: false, error: null })
    FakeSource.last!.emit('completed', 2, { generation_time: 3.2 })
    await flushPromises()
    await vi.advanceTimersByTimeAsync(600_000)
    expect(wrapper.find('[data-testid="slow"]').exists()).toBe(false)
    expect(wrapper.get('[data-testid="status-text"]').text()).toBe('Done in 3.2 s.')
  })

  it('shows a failure in plain words with a way to try again', async () => {
    const { wrapper } = await mountAt('task-1')
    FakeSource.last!.emit('failed', 2, {
      error: { code: 'no_foreground_object', message: 'No object found: nothing in the picture stands out from its background.' },
    })
    await flushPromises()
    expect(wrapper.get('[data-testid="task-error"]').text()).toBe('No object found: nothing in the picture stands out from its background.')
    locale.value = 'zh-CN'
    await flushPromises()
    expect(wrapper.get('[data-testid="task-error"]').text()).toContain('没有找到物体')
    expect(wrapper.find('[data-testid="retry"]').exists()).toBe(true)
  })
})

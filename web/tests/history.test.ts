// The history with a scripted task list: each row's thumbnail is the picture a task
// made (a 3D task's preview render), else the picture it was made from; prompt tasks
// show their prompt and kind.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createMemoryHistory, createRouter } from 'vue-router'
import type { Task } from '../src/api/types'
import { locale } from '../src/i18n'

const task = (over: Partial<Task>): Task => ({
  id: 'task-1',
  kind: 'image_to_3d',
  model: 'relief',
  status: 'succeeded',
  progress: 100,
  stage: null,
  queue_position: null,
  prompt: null,
  picture: { id: 'pic-1', url: 'http://kiln/files/pictures/pic-1.png' },
  error: null,
  created_at: '2026-11-25T10:00:00+00:00',
  started_at: null,
  finished_at: null,
  generation_time: 2,
  links: { self: '', status: '', result: '', events: '' },
  ...over,
})

const api = vi.hoisted(() => ({ tasks: vi.fn() }))
vi.mock('../src/api/client', async (original) => ({ ...(await original<object>()), api }))

beforeEach(() => {
  locale.value = 'en'
  api.tasks.mockResolvedValue({
    items: [
      task({ id: 'img', kind: 'text_to_image', model: 'painter', prompt: 'a red fox', picture: null }),
      task({ id: 'img-running', kind: 'text_to_image', model: 'painter', status: 'running', prompt: 'a cat', picture: null }),
      task({ id: '3d', kind: 'text_to_3d', model: 'tripo', prompt: 'a vase', picture: null }),
      task({ id: 'pic' }),
      task({ id: 'pic-running', status: 'running', picture: { id: 'pic-2', url: 'http://kiln/files/pictures/pic-2.png' } }),
    ],
    next_cursor: null,
  })
})
afterEach(() => vi.clearAllMocks())

describe('the history', () => {
  it('shows a picture for every kind of task that has one', async () => {
    const HistoryView = (await import('../src/views/HistoryView.vue')).default
    const router = createRouter({
      history: createMemoryHistory(),
      routes: [
        { path: '/history', component: HistoryView },
        { path: '/tasks/:id', name: 'task', component: { template: '<p/>' } },
      ],
    })
    await router.push('/history')
    const wrapper = mount({ template: '<RouterView />' }, { global: { plugins: [router] } })
    await flushPromises()
    const rows = wrapper.findAll('[data-testid="history-row"]')
    const thumb = (i: number) => rows[i]!.find('[data-testid="history-thumb"]')
    // The picture a text-to-image task made; none while it runs.
    expect(thumb(0).attributes('src')).toBe('/api/v1/tasks/img/thumbnail')
    expect(thumb(1).exists()).toBe(false)
    // A prompt-made 3D task's preview render, hidden when there is none.
    expect(thumb(2).attributes('src')).toBe('/api/v1/tasks/3d/thumbnail')
    await thumb(2).trigger('error')
    expect(thumb(2).exists()).toBe(false)
    expect(rows[2]!.find('.kind-icon').exists()).toBe(true)
    // A 3D task made from a picture: its preview render, then (none made) its picture,
    // then nothing.
    expect(thumb(3).attributes('src')).toBe('/api/v1/tasks/pic/thumbnail')
    await thumb(3).trigger('error')
    expect(thumb(3).attributes('src')).toBe('/api/v1/pictures/pic-1/thumbnail')
    await thumb(3).trigger('error')
    expect(thumb(3).exists()).toBe(false)
    // A task still running shows the picture it was made from.
    expect(thumb(4).attributes('src')).toBe('/api/v1/pictures/pic-2/thumbnail')

    expect(rows[0]!.text()).toContain('painter · Text → picture')
    expect(rows[0]!.text()).toContain('“a red fox”')
    expect(rows[0]!.get('a').text()).toBe('View picture')
    expect(rows[2]!.get('a').text()).toBe('View model')
    expect(rows[1]!.get('a').text()).toBe('Open')
  })
})

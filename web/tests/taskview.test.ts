// The task page with a scripted server: the place in line, the stage and progress from
// the stream, the 180-second notice with its two ways out, and the result shown as its
// kind and role say (a picture as a picture, a model in the viewer).
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createMemoryHistory, createRouter } from 'vue-router'
import type { Output, Task } from '../src/api/types'
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
  webhooks: vi.fn(),
}))
vi.mock('../src/api/client', async (original) => ({ ...(await original<object>()), api }))
// The viewer needs WebGL; here it only has to be the one chosen, with its URL.
vi.mock('../src/components/ModelViewer.vue', () => ({
  __esModule: true,
  default: {
    props: ['url', 'downloadUrl', 'downloadName'],
    template: '<div data-testid="viewer" :data-url="url" :data-download="downloadUrl" :data-name="downloadName"></div>',
  },
}))

const output = (over: Partial<Output>): Output => ({
  name: 'model.glb',
  role: 'model',
  url: 'http://kiln/files/reconstruction/task-1/model.glb',
  format: 'glb',
  content_type: 'model/gltf-binary',
  size: 2048,
  expired: false,
  metadata: {},
  ...over,
})
const IMAGE = output({
  name: 'image.png',
  role: 'image',
  url: 'http://kiln/files/images/task-7/image.png',
  format: 'png',
  content_type: 'image/png',
  size: 5 * 1024,
})
const PREVIEW = output({ name: 'preview.webp', role: 'preview', url: 'http://kiln/files/reconstruction/task-1/preview.webp', format: 'webp', content_type: 'image/webp' })
const finished = (outputs: Output[]) => ({ id: 'task-1', status: 'succeeded', outputs, metadata: {}, expired: false, error: null })

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
  api.webhooks.mockResolvedValue({ items: [] })
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

  it('shows a picture a text-to-image task made as a picture, with its download', async () => {
    api.task.mockResolvedValue(
      task({
        id: '0190abcd-0000-7000-8000-0000deadbeef',
        kind: 'text_to_image',
        model: 'painter',
        status: 'succeeded',
        queue_position: null,
        prompt: 'a red fox in the snow',
        picture: null,
        generation_time: 4.2,
        links: { self: 'http://kiln/api/v1/tasks/0190abcd-0000-7000-8000-0000deadbeef', status: '', result: '', events: '' },
      }),
    )
    api.result.mockResolvedValue(finished([IMAGE]))
    const { wrapper } = await mountAt('0190abcd-0000-7000-8000-0000deadbeef')
    const img = wrapper.get('[data-testid="result-image"]')
    // Under the server's own base, made relative to the page.
    expect(img.attributes('src')).toBe(`${location.origin}/files/images/task-7/image.png`)
    expect(img.attributes('alt')).toBe('The picture made from “a red fox in the snow”')
    const download = wrapper.get('[data-testid="download"]')
    expect(download.attributes('href')).toBe(img.attributes('src'))
    expect(download.attributes('download')).toBe('kiln-deadbeef.png')
    expect(download.text()).toBe('Download PNG')
    expect(wrapper.find('[data-testid="viewer"]').exists()).toBe(false)
    expect(wrapper.get('[data-testid="task-prompt"]').text()).toContain('a red fox in the snow')
    // Its size in pixels once decoded; no triangles for a picture.
    Object.defineProperty(img.element, 'naturalWidth', { value: 1024 })
    Object.defineProperty(img.element, 'naturalHeight', { value: 768 })
    await img.trigger('load')
    expect(wrapper.get('[data-testid="dimensions"]').text()).toBe('1024×768')
    expect(wrapper.find('[data-testid="triangles"]').exists()).toBe(false)
    expect(wrapper.get('[data-testid="metadata"]').text()).toContain('Text → picture')
    locale.value = 'zh-CN'
    await flushPromises()
    expect(wrapper.get('[data-testid="download"]').text()).toBe('下载 PNG')
  })

  it('shows every picture when the API made several', async () => {
    api.task.mockResolvedValue(task({ kind: 'text_to_image', status: 'succeeded', queue_position: null, prompt: 'two foxes', picture: null }))
    const second = { ...IMAGE, name: 'image-2.png', url: 'http://kiln/files/images/task-7/image-2.png' }
    api.result.mockResolvedValue(finished([IMAGE, second]))
    const { wrapper } = await mountAt('task-1')
    expect(wrapper.findAll('[data-testid="result-image"]').map((i) => i.attributes('src'))).toEqual([
      `${location.origin}/files/images/task-7/image.png`,
      `${location.origin}/files/images/task-7/image-2.png`,
    ])
    expect(wrapper.findAll('[data-testid="download"]').map((a) => a.attributes('download'))).toEqual(['kiln-task-1.png', 'kiln-task-1-2.png'])
  })

  it('shows the model of a 3D task in the viewer, not its preview render', async () => {
    api.task.mockResolvedValue(task({ kind: 'text_to_3d', status: 'succeeded', queue_position: null, prompt: 'a vase', picture: null }))
    api.result.mockResolvedValue(finished([PREVIEW, output({})]))
    const { wrapper } = await mountAt('task-1')
    const viewer = wrapper.get('[data-testid="viewer"]')
    expect(viewer.attributes('data-url')).toBe(`${location.origin}/files/reconstruction/task-1/model.glb`)
    expect(viewer.attributes('data-name')).toBe('kiln-task-1.glb')
    expect(wrapper.find('[data-testid="result-image"]').exists()).toBe(false)
  })

  it('shows the compressed copy in the viewer, downloads the original, and lists every format', async () => {
    api.task.mockResolvedValue(task({ status: 'succeeded', queue_position: null }))
    const meshopt = output({
      name: 'model.meshopt.glb',
      role: 'variant',
      url: 'http://kiln/files/reconstruction/task-1/model.meshopt.glb',
      size: 300,
      metadata: { format: 'glb-meshopt' },
    })
    const stl = { format: 'stl', file: 'model.stl', content_type: 'model/stl', status: 'available' as const, size: null, url: null }
    const glbEntry = { format: 'glb', file: 'model.glb', content_type: 'model/gltf-binary', status: 'ready' as const, size: 2048, url: output({}).url }
    api.result.mockResolvedValue({ ...finished([output({}), meshopt]), formats: [glbEntry, stl] })
    const fetch = vi.fn().mockResolvedValue({ type: 'opaqueredirect', status: 0, headers: new Headers(), text: async () => '' })
    vi.stubGlobal('fetch', fetch)
    const { wrapper } = await mountAt('task-1')
    const viewer = wrapper.get('[data-testid="viewer"]')
    expect(viewer.attributes('data-url')).toBe(`${location.origin}/files/reconstruction/task-1/model.meshopt.glb`)
    expect(viewer.attributes('data-download')).toBe(`${location.origin}/files/reconstruction/task-1/model.glb`)
    expect(viewer.attributes('data-name')).toBe('kiln-task-1.glb')
    // The size shown is the model's, not the copy's.
    expect(wrapper.get('[data-testid="metadata"]').text()).toContain('2 KB')
    const rows = wrapper.findAll('[data-testid="download-row"]')
    expect(rows.map((r) => r.attributes('data-format'))).toEqual(['glb', 'stl'])
    // No AR on a desktop.
    expect(wrapper.find('[data-testid="ar"]').exists()).toBe(false)
    // A prepared format: the page reads the result again, and the row becomes a link.
    api.result.mockResolvedValue({
      ...finished([output({}), meshopt]),
      formats: [glbEntry, { ...stl, status: 'ready', size: 4096, url: 'http://kiln/files/reconstruction/task-1/model.stl' }],
    })
    await rows[1]!.get('[data-testid="prepare"]').trigger('click')
    await flushPromises()
    expect(fetch).toHaveBeenCalledTimes(1)
    expect(api.result).toHaveBeenCalledTimes(2)
    const link = wrapper.get('[data-testid="download-row"][data-format="stl"] a')
    expect(link.attributes('download')).toBe('task-1-model.stl')
    expect(link.attributes('href')).toBe(`${location.origin}/files/reconstruction/task-1/model.stl`)
  })

  it('says when the result is missing or was deleted, in the words of its kind', async () => {
    api.task.mockResolvedValue(task({ kind: 'text_to_image', status: 'succeeded', queue_position: null, prompt: 'x', picture: null }))
    api.result.mockResolvedValue(finished([{ ...IMAGE, expired: true }]))
    let { wrapper } = await mountAt('task-1')
    expect(wrapper.get('[data-testid="result-expired"]').text()).toBe('This picture was deleted after the retention period.')
    expect(wrapper.find('[data-testid="result-image"]').exists()).toBe(false)
    wrapper.unmount()

    api.result.mockResolvedValue(finished([]))
    ;({ wrapper } = await mountAt('task-1'))
    expect(wrapper.get('[data-testid="no-result"]').text()).toBe('This task has no picture to show.')
    wrapper.unmount()

    api.task.mockResolvedValue(task({ status: 'succeeded', queue_position: null }))
    api.result.mockResolvedValue(finished([PREVIEW]))
    ;({ wrapper } = await mountAt('task-1'))
    expect(wrapper.get('[data-testid="no-result"]').text()).toBe('This task has no 3D model to show.')
  })

  it('starts a prompt task again with its prompt, model and kind', async () => {
    api.task.mockResolvedValue(
      task({ kind: 'text_to_image', model: 'painter', status: 'failed', queue_position: null, prompt: 'a fox', picture: null,
        error: { code: 'upstream_no_credits', message: 'The provider account is out of credits.' } }),
    )
    const { wrapper, router } = await mountAt('task-1')
    expect(wrapper.get('[data-testid="task-error"]').text()).toBe('The provider account is out of credits.')
    locale.value = 'zh-CN'
    await flushPromises()
    expect(wrapper.get('[data-testid="task-error"]').text()).toBe('服务商账户余额不足。')
    api.createFromPrompt.mockResolvedValue(task({ id: 'task-2' }))
    await wrapper.get('[data-testid="retry"]').trigger('click')
    await flushPromises()
    expect(api.createFromPrompt).toHaveBeenCalledWith('a fox', 'painter', 'text_to_image')
    expect(router.currentRoute.value.fullPath).toBe('/tasks/task-2')
  })

  it('shows no webhook section for a task without deliveries', async () => {
    const { wrapper } = await mountAt('task-1')
    expect(api.webhooks).toHaveBeenCalledWith('task-1')
    expect(wrapper.find('[data-testid="deliveries"]').exists()).toBe(false)
  })

  it('shows a task’s webhook deliveries and their attempts, and looks again when the next attempt is due', async () => {
    vi.setSystemTime(Date.parse('2026-11-25T10:00:10Z'))
    api.task.mockResolvedValue(task({ status: 'running', queue_position: null }))
    api.webhooks.mockResolvedValue({ items: [] })
    const { wrapper } = await mountAt('task-1')
    expect(wrapper.find('[data-testid="deliveries"]').exists()).toBe(false)

    // The task ends; its delivery is recorded, the first attempt fails.
    const pending = {
      id: 'd1',
      event: 'task.failed',
      url: 'https://hooks.example.com/kiln',
      status: 'pending',
      next_attempt_at: '2026-11-25T10:00:16Z',
      created_at: '2026-11-25T10:00:10Z',
      finished_at: null,
      attempts: [{ at: '2026-11-25T10:00:11Z', status_code: 503, error: 'the receiver answered 503 Service Unavailable', duration_ms: 41 }],
    }
    api.webhooks.mockResolvedValue({ items: [pending] })
    FakeSource.last!.emit('failed', 2, { error: { code: 'upstream_error', message: 'The provider failed.' } })
    await flushPromises()
    await vi.advanceTimersByTimeAsync(1_500)
    const section = wrapper.get('[data-testid="deliveries"]')
    expect(section.attributes('aria-labelledby')).toBe('deliveries-title')
    expect(section.get('h2').text()).toBe('Webhook deliveries')
    const delivery = section.get('[data-testid="delivery"]')
    expect(delivery.attributes('data-status')).toBe('pending')
    expect(delivery.get('h3').text()).toBe('Task failed retrying')
    expect(delivery.get('[data-testid="delivery-url"]').text()).toBe('https://hooks.example.com/kiln')
    expect(delivery.get('[data-testid="delivery-next"]').text()).toMatch(/:\d\d:16/)
    // The attempts, as a table with a caption that says whose they are.
    const table = delivery.get('[data-testid="delivery-attempts"]')
    expect(table.get('caption').text()).toBe('Attempts to deliver “Task failed” to https://hooks.example.com/kiln')
    expect(table.findAll('[data-testid="delivery-attempt"] > *').map((c) => c.text())).toEqual([
      '1',
      expect.stringMatching(/:\d\d:11/),
      'HTTP 503',
      '41 ms',
      'the receiver answered 503 Service Unavailable',
    ])

    // The retry is due at :16; the page looks again a second after.
    const delivered = {
      ...pending,
      status: 'delivered',
      next_attempt_at: null,
      finished_at: '2026-11-25T10:00:16.2Z',
      attempts: [...pending.attempts, { at: '2026-11-25T10:00:16.1Z', status_code: 200, error: null, duration_ms: 30 }],
    }
    api.webhooks.mockResolvedValue({ items: [delivered] })
    const asked = api.webhooks.mock.calls.length
    await vi.advanceTimersByTimeAsync(3_400)
    expect(api.webhooks.mock.calls.length).toBe(asked)
    await vi.advanceTimersByTimeAsync(3_700)
    expect(api.webhooks.mock.calls.length).toBeGreaterThan(asked)
    expect(wrapper.get('[data-testid="delivery-status"]').text()).toBe('delivered')
    expect(wrapper.findAll('[data-testid="delivery-attempt"]')).toHaveLength(2)

    // Nothing pending: no more looks, except when asked.
    const settled = api.webhooks.mock.calls.length
    await vi.advanceTimersByTimeAsync(600_000)
    expect(api.webhooks.mock.calls.length).toBe(settled)
    await wrapper.get('[data-testid="deliveries-refresh"]').trigger('click')
    await flushPromises()
    expect(api.webhooks.mock.calls.length).toBe(settled + 1)

    locale.value = 'zh-CN'
    await flushPromises()
    expect(wrapper.get('[data-testid="delivery"] h3').text()).toBe('任务失败 已送达')
  })
})

// The channels page against the channel API: file channels read-only, stored ones
// editable; whether each takes tasks and why not; its last hour; the switch through
// PATCH; a delete that says where the waiting tasks went; test connection of a live channel.
import { flushPromises, mount, RouterLinkStub } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { ChannelView } from '../src/api/types'
import { locale } from '../src/i18n'
import { CHANNEL_TYPES } from './fixtures/channelTypes'

const admin = vi.hoisted(() => ({
  channels: vi.fn(),
  channelTypes: vi.fn(),
  channel: vi.fn(),
  setChannelEnabled: vi.fn(),
  deleteChannel: vi.fn(),
  testChannel: vi.fn(),
}))
vi.mock('../src/api/admin', async (original) => ({ ...(await original<object>()), admin }))

const stats = { queued: 0, running: 0, succeeded: 0, failed: 0, canceled: 0, success_rate: null, p50_ms: null, p95_ms: null, last_error: null }
const config = (name: string, type: string, over: Partial<ChannelView['config']> = {}): ChannelView['config'] => ({
  name,
  type,
  models: [{ name, kind: 'image_to_3d', upstream: null, description: null }],
  secret: null,
  options: {},
  defaults: {},
  overrides: {},
  priority: 0,
  weight: 1,
  max_concurrency: 1,
  max_queue: 5,
  deadline: null,
  enabled: true,
  client_keys: false,
  breaker: { failures: 3, cooldown: '30s' },
  ...over,
})
const RELIEF: ChannelView = {
  id: null,
  name: 'relief',
  type: 'relief',
  source: 'file',
  read_only: true,
  live: true,
  problem: null,
  enabled: true,
  available: true,
  config: config('relief', 'relief'),
  created_at: null,
  updated_at: null,
  stats: {
    ...stats,
    queued: 2,
    running: 1,
    succeeded: 9,
    failed: 1,
    success_rate: 0.9,
    p50_ms: 690,
    p95_ms: 2500,
    last_error: { task_id: 't-9', code: 'no_foreground_object', message: 'No object found.', at: '2026-12-01T10:50:00Z' },
  },
}
const MS: ChannelView = {
  ...RELIEF,
  id: 'c-1',
  name: 'ms',
  type: 'modelscope',
  source: 'database',
  read_only: false,
  config: config('ms', 'modelscope', {
    models: [{ name: 'qwen', kind: 'text_to_image', upstream: 'Qwen/Qwen-Image', description: null }],
    secret: '••••fa4e',
  }),
  created_at: '2026-12-01T10:55:06Z',
  updated_at: '2026-12-01T10:55:06Z',
  stats,
}
const BROKEN: ChannelView = {
  ...MS,
  id: 'c-2',
  name: 'old-tripo',
  type: 'tripo',
  live: false,
  available: false,
  problem: 'its secret does not open',
  config: config('old-tripo', 'tripo'),
}

async function mountPage() {
  const ChannelsView = (await import('../src/views/console/ChannelsView.vue')).default
  const wrapper = mount(ChannelsView, { attachTo: document.body, global: { stubs: { RouterLink: RouterLinkStub } } })
  await flushPromises()
  return wrapper
}
const card = (wrapper: Awaited<ReturnType<typeof mountPage>>, name: string) => wrapper.get(`[data-channel="${name}"]`)

beforeEach(() => {
  locale.value = 'en'
  admin.channels.mockResolvedValue({ items: [RELIEF, MS, BROKEN] })
  admin.channelTypes.mockResolvedValue(CHANNEL_TYPES)
})
afterEach(() => {
  vi.clearAllMocks()
  document.body.innerHTML = ''
})

describe('the channels page', () => {
  it('shows each channel with where it comes from, whether it takes tasks, and its last hour', async () => {
    const wrapper = await mountPage()
    const relief = card(wrapper, 'relief')
    expect(relief.get('h2').text()).toBe('relief')
    expect(relief.text()).toContain('relief (built-in CPU engine)')
    expect(relief.get('[data-testid="channel-readonly"]').text()).toBe('from kiln.toml · read-only')
    expect(relief.get('[data-testid="channel-available"]').text()).toBe('taking tasks')
    expect(relief.get('[data-testid="channel-ended"]').text()).toBe('9 succeeded, 1 failed')
    expect(relief.get('[data-testid="channel-stats"]').text()).toContain('90%')
    expect(relief.get('[data-testid="channel-last-error"]').text()).toContain('no_foreground_object — No object found.')
    expect(relief.getComponent(RouterLinkStub).props('to')).toEqual({ name: 'task', params: { id: 't-9' } })
    // Read-only: its settings can be read, not changed.
    expect(relief.find('[data-testid="channel-edit"]').exists()).toBe(false)
    expect(relief.find('[data-testid="channel-toggle"]').exists()).toBe(false)
    expect(relief.find('[data-testid="channel-delete"]').exists()).toBe(false)
    expect(JSON.parse(relief.get('[data-testid="channel-config"]').text()).max_queue).toBe(5)

    const ms = card(wrapper, 'ms')
    expect(ms.get('[data-testid="channel-source"]').text()).toBe('stored · editable')
    expect(ms.text()).toContain('qwen → Qwen/Qwen-Image')
    expect(ms.find('[data-testid="channel-edit"]').exists()).toBe(true)

    const broken = card(wrapper, 'old-tripo')
    expect(broken.get('[data-testid="channel-problem"]').text()).toBe('Not running: its secret does not open')
    expect(broken.get('[data-testid="channel-available"]').text()).toBe('not taking tasks')
    expect(broken.get('[data-testid="channel-test"]').attributes('disabled')).toBeDefined()
  })

  it('switches a stored channel off and on with PATCH', async () => {
    admin.setChannelEnabled.mockResolvedValue({ ...MS, enabled: false, available: false, config: { ...MS.config, enabled: false } })
    const wrapper = await mountPage()
    await card(wrapper, 'ms').get('[data-testid="channel-toggle"]').trigger('click')
    await flushPromises()
    expect(admin.setChannelEnabled).toHaveBeenCalledWith('ms', false)
    expect(card(wrapper, 'ms').get('[data-testid="channel-state"]').text()).toBe('disabled')
    expect(card(wrapper, 'ms').get('[data-testid="channel-toggle"]').text()).toContain('Enable')
    expect(wrapper.get('[data-testid="channels-notice"]').text()).toBe('Channel “ms” is disabled.')
  })

  it('deletes a stored channel after asking, and says where its waiting tasks went', async () => {
    admin.deleteChannel.mockResolvedValue({ channel: MS, moved: [{ task: 't-1', to: 'ms-backup' }], failed: ['t-2', 't-3'] })
    const wrapper = await mountPage()
    await card(wrapper, 'ms').get('[data-testid="channel-delete"]').trigger('click')
    await flushPromises()
    expect(document.activeElement?.getAttribute('data-testid')).toBe('channel-delete-yes')
    await card(wrapper, 'ms').get('[data-testid="channel-delete-yes"]').trigger('click')
    await flushPromises()
    expect(admin.deleteChannel).toHaveBeenCalledWith('ms')
    expect(wrapper.find('[data-channel="ms"]').exists()).toBe(false)
    const notice = wrapper.get('[data-testid="channels-notice"]')
    expect(notice.text()).toContain('Channel “ms” was deleted.')
    expect(notice.get('[data-testid="channels-moved"]').text()).toBe('t-1 → ms-backup')
    expect(notice.text()).toContain('2 waiting tasks failed (no other channel serves their model):')
    expect(notice.findAll('[data-testid="channels-failed"] li').map((li) => li.text())).toEqual(['t-2', 't-3'])
  })

  it('tests a live channel and says what the provider answered', async () => {
    admin.testChannel.mockResolvedValue({ ok: true, message: 'The relief engine runs inside kiln: there is nothing to connect to.' })
    const wrapper = await mountPage()
    await card(wrapper, 'relief').get('[data-testid="channel-test"]').trigger('click')
    await flushPromises()
    expect(admin.testChannel).toHaveBeenCalledWith('relief')
    const result = card(wrapper, 'relief').get('[data-testid="channel-test-result"]')
    expect(result.get('[data-ok]').attributes('data-ok')).toBe('true')
    expect(result.text()).toBe('Connection works. The relief engine runs inside kiln: there is nothing to connect to.')
  })
})

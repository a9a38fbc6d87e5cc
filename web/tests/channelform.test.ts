// The channel form: its provider fields generated from the channel types, the known base
// URLs offered, the key write-only (kept when left empty), JSON defaults and overrides
// checked, and what is sent for a new channel and for an edit.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { ChannelType, ChannelView } from '../src/api/types'
import { locale } from '../src/i18n'
import { buildChannel, draftFor, jsonObjectProblem } from '../src/lib/channelForm'

const admin = vi.hoisted(() => ({ createChannel: vi.fn(), updateChannel: vi.fn() }))
vi.mock('../src/api/admin', async (original) => ({ ...(await original<object>()), admin }))

const TYPES: ChannelType[] = [
  {
    type: 'modelscope',
    fields: [
      { name: 'secret', kind: 'secret', help: 'A ModelScope access token.' },
      { name: 'base_url', kind: 'url', default: 'https://api-inference.modelscope.cn', help: 'Where the API is.' },
      { name: 'poll_interval', kind: 'string', default: '2s', help: 'How often to ask.' },
      { name: 'requests_per_minute', kind: 'int', default: 300, help: 'Outgoing rate.' },
    ],
    base_urls: [{ label: 'ModelScope', url: 'https://api-inference.modelscope.cn' }],
  },
  {
    type: 'tripo',
    fields: [
      { name: 'secret', kind: 'secret', help: 'tsk_…' },
      { name: 'region', kind: 'enum', options: ['global', 'cn'], default: 'global', help: 'The account’s region.' },
      { name: 'base_url', kind: 'url', help: 'Overrides the region.' },
    ],
    base_urls: [
      { label: 'Tripo (global)', url: 'https://openapi.tripo3d.ai' },
      { label: 'Tripo (China)', url: 'https://openapi.tripo3d.com' },
    ],
  },
  { type: 'relief', fields: [{ name: 'texture', kind: 'bool', default: true, help: 'Paint the model.' }] },
]

const STORED: ChannelView = {
  name: 'ms',
  type: 'modelscope',
  source: 'database',
  enabled: true,
  config: {
    name: 'ms',
    type: 'modelscope',
    models: [{ name: 'painter', kind: 'text_to_image', upstream: 'Qwen/Qwen-Image', description: 'Pictures' }],
    secret: '••••1234',
    options: { base_url: 'http://127.0.0.1:9000', poll_interval: '1s' },
    defaults: { steps: 30 },
    overrides: {},
    priority: 2,
    weight: 1,
    max_concurrency: 2,
    max_queue: 8,
    deadline: '10m',
    enabled: true,
    client_keys: false,
    breaker: { failures: 3, cooldown: '1m' },
  },
  stats: { queued: 0, running: 0, success_rate: null, p50_ms: null, p95_ms: null, last_error: null },
}

async function mountForm(view: ChannelView | null) {
  const ChannelForm = (await import('../src/components/ChannelForm.vue')).default
  const wrapper = mount(ChannelForm, { props: { types: TYPES, view }, attachTo: document.body })
  await flushPromises()
  return wrapper
}

beforeEach(() => {
  locale.value = 'en'
  admin.createChannel.mockImplementation(async (config) => ({ ...STORED, name: config.name, config }))
  admin.updateChannel.mockImplementation(async (_name, config) => ({ ...STORED, config }))
})
afterEach(() => {
  vi.clearAllMocks()
  document.body.innerHTML = ''
})

describe('the channel form', () => {
  it('generates the provider fields from the channel type, with its base URLs as choices', async () => {
    const wrapper = await mountForm(null)
    expect(wrapper.get('[data-testid="cf-type"]').findAll('option').map((o) => o.text())).toEqual(['modelscope', 'tripo', 'relief'])
    // ModelScope: its address preselected, the other settings empty (their defaults shown), a key input.
    const base = wrapper.get('[data-testid="cf-base-choice"]')
    expect((base.element as HTMLSelectElement).value).toBe('https://api-inference.modelscope.cn')
    expect(wrapper.get('[data-testid="cf-field-poll_interval"]').text()).toContain('Poll interval')
    expect(wrapper.get('[data-testid="cf-field-poll_interval"]').text()).toContain('Default: 2s')
    expect(wrapper.get('[data-testid="cf-opt-requests_per_minute"]').attributes('inputmode')).toBe('numeric')
    expect(wrapper.find('[data-testid="cf-secret"]').exists()).toBe(true)
    expect(wrapper.find('[data-testid="cf-opt-secret"]').exists()).toBe(false)

    // Tripo: a region list and both of Tripo's addresses.
    await wrapper.get('[data-testid="cf-type"]').setValue('tripo')
    expect(wrapper.get('[data-testid="cf-opt-region"]').findAll('option').map((o) => o.text())).toEqual([
      'The provider’s default',
      'global',
      'cn',
    ])
    const choices = wrapper.get('[data-testid="cf-base-choice"]').findAll('option').map((o) => o.attributes('value'))
    expect(choices).toEqual(['', 'https://openapi.tripo3d.ai', 'https://openapi.tripo3d.com', '__other__'])
    expect(wrapper.find('[data-testid="cf-field-poll_interval"]').exists()).toBe(false)

    // relief: a switch, no key.
    await wrapper.get('[data-testid="cf-type"]').setValue('relief')
    expect(wrapper.get('[data-testid="cf-opt-texture"]').attributes('type')).toBe('checkbox')
    expect((wrapper.get('[data-testid="cf-opt-texture"]').element as HTMLInputElement).checked).toBe(true)
    expect(wrapper.find('[data-testid="cf-secret"]').exists()).toBe(false)

    // Every input, select and text area has a label.
    for (const control of wrapper.findAll('input, select, textarea')) {
      const id = control.attributes('id')
      const labelled = (id && wrapper.find(`label[for="${id}"]`).exists()) || control.element.closest('label') !== null
      expect(labelled, id ?? control.html()).toBe(true)
    }
  })

  it('creates a channel with what was filled in, and its key', async () => {
    const wrapper = await mountForm(null)
    await wrapper.get('[data-testid="cf-name"]').setValue('modelscope-1')
    await wrapper.get('[data-testid="cf-secret"]').setValue('ms-secret-key')
    await wrapper.get('[data-testid="cf-model-name"]').setValue('painter')
    await wrapper.get('[data-testid="cf-model-kind"]').setValue('text_to_image')
    await wrapper.get('[data-testid="cf-model-upstream"]').setValue('Qwen/Qwen-Image')
    await wrapper.get('[data-testid="cf-base-choice"]').setValue('__other__')
    await wrapper.get('[data-testid="cf-opt-base_url"]').setValue('http://127.0.0.1:9000')
    await wrapper.get('[data-testid="cf-deadline"]').setValue('5m')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(admin.createChannel).toHaveBeenCalledTimes(1)
    expect(admin.createChannel.mock.calls[0]![0]).toEqual({
      name: 'modelscope-1',
      type: 'modelscope',
      models: [{ name: 'painter', kind: 'text_to_image', upstream: 'Qwen/Qwen-Image' }],
      secret: 'ms-secret-key',
      options: { base_url: 'http://127.0.0.1:9000' },
      defaults: {},
      overrides: {},
      priority: 0,
      weight: 1,
      max_concurrency: 1,
      max_queue: 5,
      deadline: '5m',
      enabled: true,
      client_keys: false,
    })
    expect(wrapper.emitted('saved')).toHaveLength(1)
  })

  it('shows the stored key masked, and keeps it when the input is left empty', async () => {
    const wrapper = await mountForm(STORED)
    const secret = wrapper.get('[data-testid="cf-secret"]')
    expect((secret.element as HTMLInputElement).value).toBe('')
    expect(secret.attributes('type')).toBe('password')
    expect(wrapper.get('[data-testid="cf-secret-hint"]').text()).toContain('Stored: ••••1234. Leave empty to keep it')
    expect(wrapper.get('[data-testid="cf-name"]').attributes('readonly')).toBeDefined()
    // A base URL that is none of the choices shows as "another address".
    expect((wrapper.get('[data-testid="cf-base-choice"]').element as HTMLSelectElement).value).toBe('__other__')
    expect((wrapper.get('[data-testid="cf-opt-base_url"]').element as HTMLInputElement).value).toBe('http://127.0.0.1:9000')

    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    const [name, config] = admin.updateChannel.mock.calls[0]!
    expect(name).toBe('ms')
    expect('secret' in config).toBe(false)
    // What the form does not show is kept as it was.
    expect(config.breaker).toEqual({ failures: 3, cooldown: '1m' })
    expect(config.models).toEqual([{ name: 'painter', kind: 'text_to_image', upstream: 'Qwen/Qwen-Image', description: 'Pictures' }])
    expect(config.options).toEqual({ base_url: 'http://127.0.0.1:9000', poll_interval: '1s' })
    expect(config.defaults).toEqual({ steps: 30 })
    expect(config.deadline).toBe('10m')

    // A new key replaces it.
    await wrapper.get('[data-testid="cf-secret"]').setValue('new-key')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(admin.updateChannel.mock.calls[1]![1].secret).toBe('new-key')
  })

  it('checks defaults and overrides as JSON objects, and sends nothing while they are wrong', async () => {
    const wrapper = await mountForm(STORED)
    const defaults = wrapper.get('[data-testid="cf-defaults"]')
    await defaults.setValue('{"steps": 30,')
    await defaults.trigger('input')
    expect(defaults.attributes('aria-invalid')).toBe('true')
    expect(wrapper.get('[data-testid="cf-defaults-error"]').text()).toMatch(/^Not valid JSON: /)
    await wrapper.get('[data-testid="cf-overrides"]').setValue('[1, 2]')
    await wrapper.get('[data-testid="cf-overrides"]').trigger('input')
    expect(wrapper.get('[data-testid="cf-overrides-error"]').text()).toBe('Write a JSON object: { … }.')

    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(admin.updateChannel).not.toHaveBeenCalled()
    expect(document.activeElement).toBe(defaults.element)

    await defaults.setValue('{"steps": 40}')
    await defaults.trigger('input')
    expect(wrapper.find('[data-testid="cf-defaults-error"]').exists()).toBe(false)
    await wrapper.get('[data-testid="cf-overrides"]').setValue('{"seed": 1}')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(admin.updateChannel.mock.calls[0]![1]).toMatchObject({ defaults: { steps: 40 }, overrides: { seed: 1 } })
  })

  it('says what the server refused', async () => {
    const { ApiError } = await import('../src/api/client')
    admin.updateChannel.mockRejectedValue(new ApiError('channel_read_only', '', 409))
    const wrapper = await mountForm(STORED)
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(wrapper.get('[data-testid="cf-error"]').text()).toBe('This channel comes from kiln.toml: change it there.')
  })
})

describe('the channel rules', () => {
  it('refuse bad numbers, URLs, names and models field by field', () => {
    const draft = draftFor(TYPES[0], null)
    Object.assign(draft, { name: 'bad name', weight: '-1', maxConcurrency: '0', priority: 'x' })
    draft.options.requests_per_minute = '1.5'
    draft.options.base_url = 'ftp://x'
    draft.models = [
      { name: 'a', kind: 'text_to_image', upstream: '' },
      { name: 'a', kind: 'text_to_image', upstream: '' },
      { name: 'a', kind: 'text_to_3d', upstream: '' },
    ]
    const { problems } = buildChannel(draft, TYPES[0])
    expect(problems).toEqual({
      name: { key: 'name' },
      priority: { key: 'int' },
      weight: { key: 'min', params: { min: 0 } },
      maxConcurrency: { key: 'min', params: { min: 1 } },
      'model.1.name': { key: 'duplicateModel', params: { name: 'a' } },
      'option.requests_per_minute': { key: 'int' },
      'option.base_url': { key: 'url' },
    })
  })
  it('take an empty JSON box as an empty object', () => {
    expect(jsonObjectProblem('')).toBeNull()
    expect(jsonObjectProblem('{}')).toBeNull()
    expect(jsonObjectProblem('null')).toEqual({ key: 'jsonObject' })
  })
})

// The channel form against the channel API: its provider fields generated from the
// channel types as the server describes them, the known base URLs offered, the kinds a
// type makes, the key write-only (kept when left empty), durations, lists and JSON
// checked, what is sent for a new channel and for an edit, "test connection" before
// saving, and the server's field problems shown next to their fields.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError } from '../src/api/client'
import type { ChannelView } from '../src/api/types'
import { locale } from '../src/i18n'
import { buildChannel, draftFor, jsonObjectProblem, problemKey, serverProblems } from '../src/lib/channelForm'
import { CHANNEL_TYPES as TYPES } from './fixtures/channelTypes'

const admin = vi.hoisted(() => ({ createChannel: vi.fn(), updateChannel: vi.fn(), testDraft: vi.fn() }))
vi.mock('../src/api/admin', async (original) => ({ ...(await original<object>()), admin }))

const type = (name: string) => TYPES.find((t) => t.type === name)!

const STORED: ChannelView = {
  id: '01a2313e-7476-75a0-bc29-7cc5df11ba9c',
  name: 'ms',
  type: 'modelscope',
  source: 'database',
  read_only: false,
  live: true,
  problem: null,
  enabled: true,
  available: true,
  config: {
    name: 'ms',
    type: 'modelscope',
    models: [{ name: 'painter', kind: 'text_to_image', upstream: 'Qwen/Qwen-Image', description: 'Pictures' }],
    secret: '••••fa4e',
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
  created_at: '2026-12-01T10:55:06.358Z',
  updated_at: '2026-12-01T10:55:06.358Z',
  stats: { queued: 0, running: 0, succeeded: 0, failed: 0, canceled: 0, success_rate: null, p50_ms: null, p95_ms: null, last_error: null },
}

async function mountForm(view: ChannelView | null) {
  const ChannelForm = (await import('../src/components/ChannelForm.vue')).default
  const wrapper = mount(ChannelForm, { props: { types: TYPES, view }, attachTo: document.body })
  await flushPromises()
  return wrapper
}

const value = (wrapper: Awaited<ReturnType<typeof mountForm>>, testid: string) =>
  (wrapper.get(`[data-testid="${testid}"]`).element as HTMLInputElement).value

beforeEach(() => {
  locale.value = 'en'
  admin.createChannel.mockImplementation(async (config) => ({ ...STORED, name: config.name, config }))
  admin.updateChannel.mockImplementation(async (_name, config) => ({ ...STORED, config }))
  admin.testDraft.mockResolvedValue({ ok: true, message: 'ModelScope took the token and lists 2 models.' })
})
afterEach(() => {
  vi.clearAllMocks()
  document.body.innerHTML = ''
})

describe('the channel form', () => {
  it('generates the provider fields from the channel type, with its base URLs and kinds as choices', async () => {
    const wrapper = await mountForm(null)
    expect(wrapper.get('[data-testid="cf-type"]').findAll('option').map((o) => o.attributes('value'))).toEqual([
      'modelscope',
      'relief',
      'tripo',
      'worker',
    ])
    expect(wrapper.get('[data-testid="cf-type"] option').text()).toBe('ModelScope API-Inference (cloud images) (modelscope)')
    // ModelScope: its address preselected, the other settings empty (their defaults shown), a key input.
    expect(value(wrapper, 'cf-base-choice')).toBe('https://api-inference.modelscope.cn')
    expect(wrapper.find('[data-testid="cf-opt-base_url"]').exists()).toBe(false)
    const poll = wrapper.get('[data-testid="cf-field-poll_interval"]').text()
    expect(poll).toContain('Poll interval')
    expect(poll).toContain('Such as 500ms, 30s, 5m or 1h.')
    expect(poll).toContain('Default: 2s')
    expect(wrapper.get('[data-testid="cf-opt-requests_per_minute"]').attributes('inputmode')).toBe('numeric')
    expect(wrapper.get('[data-testid="cf-secret-hint"]').text()).toContain('Access token: A ModelScope access token')
    expect(wrapper.find('[data-testid="cf-opt-secret"]').exists()).toBe(false)
    // ModelScope makes pictures only.
    expect(wrapper.get('[data-testid="cf-model-kind"]').findAll('option').map((o) => o.attributes('value'))).toEqual(['text_to_image'])

    // Tripo: a region list, both of Tripo's addresses, its two kinds.
    await wrapper.get('[data-testid="cf-type"]').setValue('tripo')
    expect(wrapper.get('[data-testid="cf-opt-region"]').findAll('option').map((o) => o.text())).toEqual([
      'The provider’s default',
      'global',
      'cn',
    ])
    expect(wrapper.get('[data-testid="cf-base-choice"]').findAll('option').map((o) => o.attributes('value'))).toEqual([
      'https://openapi.tripo3d.ai',
      'https://openapi.tripo3d.com',
      '__other__',
    ])
    expect(wrapper.get('[data-testid="cf-model-kind"]').findAll('option').map((o) => o.attributes('value'))).toEqual([
      'image_to_3d',
      'text_to_3d',
    ])
    expect(wrapper.find('[data-testid="cf-field-poll_interval"]').exists()).toBe(false)

    // Workers: their URLs one a line, required.
    await wrapper.get('[data-testid="cf-type"]').setValue('worker')
    const workers = wrapper.get('[data-testid="cf-opt-workers"]')
    expect(workers.element.tagName).toBe('TEXTAREA')
    expect(workers.attributes('required')).toBeDefined()
    expect(wrapper.get('[data-testid="cf-field-workers"]').text()).toContain('(required)')
    expect(wrapper.get('[data-testid="cf-field-workers"]').text()).toContain('One a line.')

    // relief: a number and a whole number, no key.
    await wrapper.get('[data-testid="cf-type"]').setValue('relief')
    expect(wrapper.get('[data-testid="cf-opt-depth"]').attributes('inputmode')).toBe('decimal')
    expect(wrapper.get('[data-testid="cf-field-depth"]').text()).toContain('Default: 0.35')
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
    await wrapper.get('[data-testid="cf-model-upstream"]').setValue('Qwen/Qwen-Image')
    await wrapper.get('[data-testid="cf-opt-poll_interval"]').setValue('500ms')
    await wrapper.get('[data-testid="cf-deadline"]').setValue('5m')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    // The provider's own address, chosen as it was offered, is left to the provider.
    expect(admin.createChannel.mock.calls[0]![0]).toEqual({
      name: 'modelscope-1',
      type: 'modelscope',
      models: [{ name: 'painter', kind: 'text_to_image', upstream: 'Qwen/Qwen-Image' }],
      secret: 'ms-secret-key',
      options: { poll_interval: '500ms' },
      defaults: {},
      overrides: {},
      priority: 0,
      weight: 1,
      max_concurrency: 1,
      max_queue: 5,
      deadline: '5m',
      breaker: { failures: 3, cooldown: '30s' },
      enabled: true,
      client_keys: false,
    })
    expect(wrapper.emitted('saved')).toHaveLength(1)

    // Another address is sent as typed.
    await wrapper.get('[data-testid="cf-base-choice"]').setValue('__other__')
    await wrapper.get('[data-testid="cf-opt-base_url"]').setValue('http://127.0.0.1:9000')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(admin.createChannel.mock.calls[1]![0].options).toEqual({ base_url: 'http://127.0.0.1:9000', poll_interval: '500ms' })
  })

  it('needs a key for a type that takes one, and the workers of a worker channel as a list', async () => {
    const wrapper = await mountForm(null)
    await wrapper.get('[data-testid="cf-name"]').setValue('gpu')
    await wrapper.get('[data-testid="cf-model-name"]').setValue('relief')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(admin.createChannel).not.toHaveBeenCalled()
    expect(wrapper.get('[data-testid="cf-secret"]').attributes('aria-invalid')).toBe('true')
    expect(document.activeElement).toBe(wrapper.get('[data-testid="cf-secret"]').element)

    await wrapper.get('[data-testid="cf-type"]').setValue('worker')
    await wrapper.get('[data-testid="cf-secret"]').setValue('worker-secret')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(wrapper.get('[data-testid="cf-opt-workers"]').attributes('aria-invalid')).toBe('true')
    await wrapper.get('[data-testid="cf-opt-workers"]').setValue('http://10.0.0.5:9000\n\n  http://10.0.0.6:9000  \n')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(admin.createChannel.mock.calls[0]![0]).toMatchObject({
      type: 'worker',
      secret: 'worker-secret',
      models: [{ name: 'relief', kind: 'image_to_3d' }],
      options: { workers: ['http://10.0.0.5:9000', 'http://10.0.0.6:9000'] },
    })
  })

  it('shows the stored key masked, and keeps it when the input is left empty', async () => {
    const wrapper = await mountForm(STORED)
    const secret = wrapper.get('[data-testid="cf-secret"]')
    expect((secret.element as HTMLInputElement).value).toBe('')
    expect(secret.attributes('type')).toBe('password')
    expect(wrapper.get('[data-testid="cf-secret-hint"]').text()).toContain('Stored: ••••fa4e. Leave empty to keep it')
    // A required key can be replaced, not removed.
    expect(wrapper.find('[data-testid="cf-secret-clear"]').exists()).toBe(false)
    expect(wrapper.get('[data-testid="cf-name"]').attributes('readonly')).toBeDefined()
    // A base URL that is none of the choices shows as "another address".
    expect(value(wrapper, 'cf-base-choice')).toBe('__other__')
    expect(value(wrapper, 'cf-opt-base_url')).toBe('http://127.0.0.1:9000')
    expect(value(wrapper, 'cf-breakerCooldown')).toBe('1m')

    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    const [name, config] = admin.updateChannel.mock.calls[0]!
    expect(name).toBe('ms')
    expect('secret' in config).toBe(false)
    // What the form does not show is kept as it was.
    expect(config.models).toEqual([{ name: 'painter', kind: 'text_to_image', upstream: 'Qwen/Qwen-Image', description: 'Pictures' }])
    expect(config.options).toEqual({ base_url: 'http://127.0.0.1:9000', poll_interval: '1s' })
    expect(config.defaults).toEqual({ steps: 30 })
    expect(config.deadline).toBe('10m')
    expect(config.breaker).toEqual({ failures: 3, cooldown: '1m' })

    // A new key replaces it.
    await wrapper.get('[data-testid="cf-secret"]').setValue('new-key')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(admin.updateChannel.mock.calls[1]![1].secret).toBe('new-key')
  })

  it('tests the connection with the form as it is, the stored key standing in for an empty input', async () => {
    const wrapper = await mountForm(STORED)
    await wrapper.get('[data-testid="cf-test"]').trigger('click')
    await flushPromises()
    const [config, channel] = admin.testDraft.mock.calls[0]!
    expect(channel).toBe('ms')
    expect('secret' in config).toBe(false)
    expect(config.options.base_url).toBe('http://127.0.0.1:9000')
    const result = wrapper.get('[data-testid="cf-test-result"]')
    expect(result.attributes('aria-live')).toBe('polite')
    expect(result.get('[data-ok]').attributes('data-ok')).toBe('true')
    expect(result.text()).toBe('Connection works. ModelScope took the token and lists 2 models.')
    expect(admin.updateChannel).not.toHaveBeenCalled()

    admin.testDraft.mockResolvedValue({ ok: false, message: 'ModelScope refused the access token' })
    await wrapper.get('[data-testid="cf-secret"]').setValue('wrong')
    await wrapper.get('[data-testid="cf-test"]').trigger('click')
    await flushPromises()
    expect(admin.testDraft.mock.calls[1]![0].secret).toBe('wrong')
    expect(result.text()).toBe('Connection failed. ModelScope refused the access token')

    // A new channel is tested without a stored one behind it.
    const fresh = await mountForm(null)
    await fresh.get('[data-testid="cf-name"]').setValue('ms2')
    await fresh.get('[data-testid="cf-secret"]').setValue('k')
    await fresh.get('[data-testid="cf-model-name"]').setValue('qwen')
    await fresh.get('[data-testid="cf-test"]').trigger('click')
    await flushPromises()
    expect(admin.testDraft.mock.calls[2]![1]).toBeNull()
  })

  it('shows the server’s field problems next to their fields, and the others for the form', async () => {
    admin.createChannel.mockRejectedValue(
      new ApiError('invalid_channel', 'The channel is not valid; `error.details.problems` says which fields.', 400, null, {
        problems: [
          { field: 'name', message: '`ms` is used by another channel' },
          { field: 'models[0].kind', message: '`x` is not one of image_to_3d, text_to_3d, text_to_image' },
          { field: 'options', message: '`poll_interval`: invalid value: string "soon", expected a duration' },
          { field: 'secret', message: 'a cloud channel needs `secret`' },
          { field: 'colour', message: 'unknown field `colour`' },
        ],
      }),
    )
    const wrapper = await mountForm(null)
    await wrapper.get('[data-testid="cf-name"]').setValue('ms')
    await wrapper.get('[data-testid="cf-secret"]').setValue('k')
    await wrapper.get('[data-testid="cf-model-name"]').setValue('qwen')
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    const name = wrapper.get('[data-testid="cf-name"]')
    expect(name.attributes('aria-invalid')).toBe('true')
    expect(wrapper.get(`#${name.attributes('aria-describedby')!.split(' ')[1]}`).text()).toBe('`ms` is used by another channel')
    expect(document.activeElement).toBe(name.element)
    expect(wrapper.get('[data-testid="cf-model-kind"]').attributes('aria-invalid')).toBe('true')
    expect(wrapper.get('[data-testid="cf-opt-poll_interval"]').attributes('aria-invalid')).toBe('true')
    expect(wrapper.get('[data-testid="cf-field-poll_interval"] .field-error').text()).toContain('expected a duration')
    expect(wrapper.get('[data-testid="cf-field-secret"] .field-error').text()).toBe('a cloud channel needs `secret`')
    expect(wrapper.get('[data-testid="cf-error"]').text()).toBe('The channel is not valid; `error.details.problems` says which fields.')
    expect(wrapper.get('[data-testid="cf-general-problems"]').text()).toBe('colour: unknown field `colour`')
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
    admin.updateChannel.mockRejectedValue(new ApiError('channel_read_only', '', 409))
    const wrapper = await mountForm(STORED)
    await wrapper.get('[data-testid="channel-form"]').trigger('submit')
    await flushPromises()
    expect(wrapper.get('[data-testid="cf-error"]').text()).toBe('This channel comes from kiln.toml: change it there.')
  })
})

describe('the channel rules', () => {
  it('refuse bad numbers, URLs, durations, names and models field by field', () => {
    const draft = draftFor(type('modelscope'), null)
    Object.assign(draft, { name: 'bad name', weight: '-1', maxConcurrency: '0', priority: 'x', deadline: 'soon', breakerCooldown: '' })
    draft.secret = 'k'
    draft.options.requests_per_minute = '1.5'
    draft.options.poll_interval = 'often'
    draft.options.base_url = 'ftp://x'
    draft.models = [
      { name: 'a', kind: 'text_to_image', upstream: '' },
      { name: 'a', kind: 'text_to_image', upstream: '' },
      { name: 'a', kind: 'text_to_3d', upstream: '' },
    ]
    const { problems } = buildChannel(draft, type('modelscope'))
    expect(problems).toEqual({
      name: { key: 'name' },
      priority: { key: 'int' },
      weight: { key: 'min', params: { min: 0 } },
      maxConcurrency: { key: 'min', params: { min: 1 } },
      deadline: { key: 'duration' },
      breakerCooldown: { key: 'duration' },
      'model.1.name': { key: 'duplicateModel', params: { name: 'a' } },
      'option.requests_per_minute': { key: 'int' },
      'option.poll_interval': { key: 'duration' },
      'option.base_url': { key: 'url' },
    })
    const relief = draftFor(type('relief'), null)
    Object.assign(relief, { name: 'r' })
    relief.models[0]!.name = 'relief'
    relief.options.depth = '0,4'
    expect(buildChannel(relief, type('relief')).problems).toEqual({ 'option.depth': { key: 'number' } })
    relief.options.depth = '0.4'
    expect(buildChannel(relief, type('relief')).config?.options).toEqual({ depth: 0.4 })
  })
  it('take an empty JSON box as an empty object', () => {
    expect(jsonObjectProblem('')).toBeNull()
    expect(jsonObjectProblem('{}')).toBeNull()
    expect(jsonObjectProblem('null')).toEqual({ key: 'jsonObject' })
  })
  it('file the server’s fields under the form’s inputs', () => {
    const ms = type('modelscope')
    expect(problemKey('max_concurrency', '', ms)).toBe('maxConcurrency')
    expect(problemKey('models[2].name', '', ms)).toBe('model.2.name')
    expect(problemKey('models[2]', '', ms)).toBe('model.2.name')
    expect(problemKey('options.base_url', '', ms)).toBe('option.base_url')
    expect(problemKey('options', '`base_url`: `ftp://x/` is not an http(s) URL', ms)).toBe('option.base_url')
    expect(problemKey('options', 'unknown field `colour`, expected `base_url`', ms)).toBe('options')
    expect(problemKey('breaker.cooldown', '', ms)).toBe('breakerCooldown')
    expect(problemKey('config', 'missing field `models`', ms)).toBeNull()
    expect(serverProblems([{ field: 'config', message: 'missing field `models`' }], ms).general).toEqual(['missing field `models`'])
  })
})

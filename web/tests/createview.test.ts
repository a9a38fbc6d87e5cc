// The create page with a scripted catalog: every model in one picker, grouped by kind;
// the input follows the chosen model's kind; cloud models and resting channels say so.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createMemoryHistory, createRouter } from 'vue-router'
import type { CatalogModel } from '../src/api/types'
import { locale } from '../src/i18n'

const model = (over: Partial<CatalogModel>): CatalogModel => ({
  name: 'relief',
  kind: 'image_to_3d',
  description: 'Relief from one picture',
  default: true,
  available: true,
  cloud: false,
  channels: [{ name: 'relief', provider: 'relief', available: true, cloud: false, resting_for: null }],
  ...over,
})

const CATALOG = [
  model({}),
  model({
    name: 'tripo',
    kind: 'text_to_3d',
    description: 'Tripo v3',
    cloud: true,
    channels: [{ name: 'tripo', provider: 'tripo', available: true, cloud: true, resting_for: null }],
  }),
  model({
    name: 'painter',
    kind: 'text_to_image',
    description: 'Pictures from words',
    cloud: true,
    channels: [
      { name: 'images-a', provider: 'openai_images', available: true, cloud: true, resting_for: null },
      { name: 'images-b', provider: 'openai_images', available: false, cloud: true, resting_for: 42 },
    ],
  }),
  model({
    name: 'sleepy',
    kind: 'text_to_image',
    default: false,
    available: false,
    cloud: true,
    channels: [{ name: 'sleepy', provider: 'modelscope', available: false, cloud: true, resting_for: 90 }],
  }),
]

const api = vi.hoisted(() => ({
  catalog: vi.fn(),
  limits: vi.fn(),
  picture: vi.fn(),
  createFromPrompt: vi.fn(),
  createFromPicture: vi.fn(),
}))
vi.mock('../src/api/client', async (original) => ({ ...(await original<object>()), api }))

async function mountAt(path: string) {
  const CreateView = (await import('../src/views/CreateView.vue')).default
  const router = createRouter({
    history: createMemoryHistory(),
    routes: [
      { path: '/', name: 'create', component: CreateView },
      { path: '/tasks/:id', name: 'task', component: { template: '<p>task</p>' } },
    ],
  })
  await router.push(path)
  const wrapper = mount({ template: '<RouterView />' }, { global: { plugins: [router] }, attachTo: document.body })
  await flushPromises()
  return { wrapper, router }
}

beforeEach(() => {
  locale.value = 'en'
  api.catalog.mockResolvedValue({ models: CATALOG })
  api.limits.mockRejectedValue(new Error('offline'))
})
afterEach(() => {
  vi.clearAllMocks()
  document.body.innerHTML = ''
})

describe('the create page', () => {
  it('offers every model of the catalog, grouped by kind, and starts with the default picture model', async () => {
    const { wrapper } = await mountAt('/')
    const groups = wrapper.findAll('optgroup').map((g) => [g.attributes('label'), g.findAll('option').map((o) => o.text())])
    expect(groups).toEqual([
      ['Picture → 3D model', ['relief (default)']],
      ['Text → 3D model', ['tripo · cloud (default)']],
      ['Text → picture', ['painter · cloud (default)', 'sleepy · cloud (resting, about 1 min 30 s)']],
    ])
    expect(wrapper.get('[data-testid="model"]').element).toHaveProperty('value', 'image_to_3d:relief')
    expect(wrapper.find('[data-testid="drop"]').exists()).toBe(true)
    expect(wrapper.find('[data-testid="prompt"]').exists()).toBe(false)
    expect(wrapper.find('[data-testid="cloud-badge"]').exists()).toBe(false)
    expect(wrapper.get('h1').text()).toBe('Turn a picture into a 3D model')
    // A model that cannot take work now cannot be chosen.
    expect(wrapper.get('option[value="text_to_image:sleepy"]').attributes('disabled')).toBeDefined()
  })

  it('asks for a prompt when a text model is chosen, and sends it with the model and its kind', async () => {
    const { wrapper, router } = await mountAt('/')
    await wrapper.get('[data-testid="model"]').setValue('text_to_image:painter')
    expect(wrapper.find('[data-testid="drop"]').exists()).toBe(false)
    expect(wrapper.get('label[for="prompt"]').text()).toBe('Describe the picture')
    expect(wrapper.get('h1').text()).toBe('Turn words into a picture')
    const submit = wrapper.get('[data-testid="submit"]')
    expect(submit.text()).toBe('Create picture')
    expect(submit.attributes('disabled')).toBeDefined()
    await wrapper.get('[data-testid="prompt"]').setValue('  a red fox in the snow ')
    expect(submit.attributes('disabled')).toBeUndefined()
    api.createFromPrompt.mockResolvedValue({ id: 'task-9' })
    await wrapper.get('form').trigger('submit')
    await flushPromises()
    expect(api.createFromPrompt).toHaveBeenCalledWith('a red fox in the snow', 'painter', 'text_to_image')
    expect(router.currentRoute.value.fullPath).toBe('/tasks/task-9')

    // Text to 3D asks for an object.
    await router.push('/')
    await flushPromises()
    await wrapper.get('[data-testid="model"]').setValue('text_to_3d:tripo')
    expect(wrapper.get('label[for="prompt"]').text()).toBe('Describe the object')
    expect(wrapper.get('[data-testid="submit"]').text()).toBe('Create 3D model')
  })

  it('marks a cloud model with a badge that explains itself, and names a resting channel', async () => {
    const { wrapper } = await mountAt('/')
    await wrapper.get('[data-testid="model"]').setValue('text_to_image:painter')
    const badge = wrapper.get('[data-testid="cloud-badge"]')
    expect(badge.text()).toBe('cloud')
    expect(badge.attributes('tabindex')).toBe('0')
    const tip = wrapper.get(`#${badge.attributes('aria-describedby')}`)
    expect(tip.attributes('role')).toBe('tooltip')
    expect(tip.text()).toBe('A cloud model: the job leaves this machine for the provider, who may bill for it.')
    expect(wrapper.get('[data-testid="resting"]').text()).toBe(
      'Channel images-b is resting after repeated failures; it takes new tasks again in about 42 s.',
    )
    locale.value = 'zh-CN'
    await flushPromises()
    expect(wrapper.get('[data-testid="cloud-badge"]').text()).toBe('云端')
    expect(wrapper.get('[data-testid="cloud-tip"]').text()).toContain('服务商可能会收费')
    expect(wrapper.find('optgroup[label="文字 → 图片"]').exists()).toBe(true)
  })

  it('switches to a picture model for a picture from the library', async () => {
    api.picture.mockResolvedValue({
      id: 'pic-1',
      url: 'http://kiln/files/pictures/pic-1.png',
      format: 'png',
      width: 640,
      height: 480,
      size: 12345,
      original_name: 'vase.png',
      created_at: '2026-11-25T10:00:00+00:00',
      expired: false,
    })
    const { wrapper, router } = await mountAt('/')
    await wrapper.get('[data-testid="model"]').setValue('text_to_image:painter')
    await router.push('/?picture=pic-1')
    await flushPromises()
    expect(wrapper.get('[data-testid="model"]').element).toHaveProperty('value', 'image_to_3d:relief')
    expect(wrapper.get('[data-testid="preview"]').attributes('alt')).toBe('The stored picture vase.png')
    api.createFromPicture.mockResolvedValue({ id: 'task-3' })
    await wrapper.get('form').trigger('submit')
    await flushPromises()
    expect(api.createFromPicture).toHaveBeenCalledWith('pic-1', 'relief')
  })
})

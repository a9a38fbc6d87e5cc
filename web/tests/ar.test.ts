// AR on phones: which phone opens what, the exact Scene Viewer intent, the GLB and USDZ
// chosen from the result's formats, and the button on iOS (USDZ asked for at once, the
// `<a rel="ar">` with a picture as its one child), Android (the intent) and a desktop
// (nothing).
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { FormatEntry } from '../src/api/types'
import { locale } from '../src/i18n'
import {
  absoluteUrl,
  arPlatform,
  NO_AR_HASH,
  quickLookState,
  quickLookSupported,
  sceneViewerIntent,
  sceneViewerModel,
} from '../src/lib/ar'
import { stopPreparing } from '../src/lib/downloads'

const IPHONE = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1'
const PIXEL = 'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36'
const DESKTOP = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36'

const entry = (over: Partial<FormatEntry>): FormatEntry => ({
  format: 'glb',
  file: 'model.glb',
  content_type: 'model/gltf-binary',
  status: 'ready',
  size: 1000,
  url: 'http://kiln/files/reconstruction/t/model.glb',
  ...over,
})
const usdz = (over: Partial<FormatEntry>) =>
  entry({ format: 'usdz', file: 'model.usdz', content_type: 'model/vnd.usdz+zip', status: 'available', size: null, url: null, ...over })

describe('which phone opens AR how', () => {
  it('is Quick Look where anchors support rel="ar", Scene Viewer on Android, nothing on a desktop', () => {
    expect(arPlatform(IPHONE, true)).toBe('quick-look')
    // An iPad's Safari says it is a Mac: the feature test decides, not the user agent.
    expect(arPlatform('Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Version/17.5 Safari/605.1.15', true)).toBe('quick-look')
    expect(arPlatform(PIXEL, false)).toBe('scene-viewer')
    expect(arPlatform(DESKTOP, false)).toBeNull()
    // An iPhone's user agent without the feature (another browser engine's view) is not enough.
    expect(arPlatform(IPHONE, false)).toBeNull()
  })

  it('tests the feature on an anchor, and survives browsers where the test throws', () => {
    const withSupport = (supports: (token: string) => boolean) =>
      ({ createElement: () => ({ relList: { supports } }) }) as unknown as Pick<Document, 'createElement'>
    expect(quickLookSupported(withSupport((token) => token === 'ar'))).toBe(true)
    expect(quickLookSupported(withSupport(() => false))).toBe(false)
    expect(
      quickLookSupported(
        withSupport(() => {
          throw new TypeError('DOMTokenList has no supported tokens')
        }),
      ),
    ).toBe(false)
    expect(quickLookSupported({ createElement: () => ({}) } as unknown as Pick<Document, 'createElement'>)).toBe(false)
    // happy-dom, like Chromium on a desktop, has no Quick Look.
    expect(quickLookSupported(document)).toBe(false)
  })
})

describe('the Scene Viewer intent', () => {
  it('is exactly the form Google documents, with the GLB and the fallback encoded', () => {
    const intent = sceneViewerIntent(
      'https://kiln.example.com/files/reconstruction/0190/model.core.glb?expires=1&sig=a+b/c',
      'Task 0000beef',
      'https://kiln.example.com/tasks/0190?x=1#top',
    )
    expect(intent).toBe(
      'intent://arvr.google.com/scene-viewer/1.2?mode=ar_preferred&title=Task%200000beef' +
        '&file=https%3A%2F%2Fkiln.example.com%2Ffiles%2Freconstruction%2F0190%2Fmodel.core.glb%3Fexpires%3D1%26sig%3Da%2Bb%2Fc' +
        '#Intent;scheme=https;package=com.google.android.googlequicksearchbox;action=android.intent.action.VIEW;' +
        'S.browser_fallback_url=https%3A%2F%2Fkiln.example.com%2Ftasks%2F0190%3Fx%3D1%23no-ar;end;',
    )
    expect(NO_AR_HASH).toBe('#no-ar')
  })

  it('encodes a title that would break the intent', () => {
    const intent = sceneViewerIntent('https://k/m.glb', 'vase; #1 & co', 'https://k/t')
    expect(intent).toContain('title=vase%3B%20%231%20%26%20co&file=')
    expect(intent.split('#Intent;')).toHaveLength(2)
  })

  it('gets the compatible GLB when there is one, else the model', () => {
    const core = entry({ format: 'glb-core', file: 'model.core.glb', url: 'http://kiln/files/reconstruction/t/model.core.glb' })
    expect(sceneViewerModel([entry({}), core], 'http://kiln/m.glb')).toBe('http://kiln/files/reconstruction/t/model.core.glb')
    expect(sceneViewerModel([entry({}), { ...core, status: 'available', url: null }], 'http://kiln/m.glb')).toBe('http://kiln/m.glb')
    expect(sceneViewerModel(undefined, 'http://kiln/m.glb')).toBe('http://kiln/m.glb')
    expect(sceneViewerModel([], null)).toBeNull()
  })

  it('gets an absolute URL', () => {
    expect(absoluteUrl('/files/a/model.glb?sig=1', 'https://kiln.example.com/tasks/t#x')).toBe('https://kiln.example.com/files/a/model.glb?sig=1')
    expect(absoluteUrl('https://cdn.example.com/m.glb', 'https://kiln.example.com/tasks/t')).toBe('https://cdn.example.com/m.glb')
  })
})

describe('what Quick Look waits for', () => {
  it('is the stored USDZ', () => {
    expect(quickLookState([usdz({ status: 'ready', url: 'http://kiln/files/t/model.usdz', size: 9 })])).toEqual({
      state: 'ready',
      url: 'http://kiln/files/t/model.usdz',
    })
    expect(quickLookState([usdz({})])).toEqual({ state: 'preparing' })
    expect(quickLookState([usdz({ status: 'pending' })])).toEqual({ state: 'preparing' })
    expect(quickLookState([usdz({ status: 'failed', error: { code: 'model_too_large', message: 'Too big.' } })])).toEqual({ state: 'unavailable' })
    // A server without formats (older, or not a 3D task).
    expect(quickLookState([])).toEqual({ state: 'unavailable' })
    expect(quickLookState(undefined)).toEqual({ state: 'unavailable' })
  })
})

describe('the AR button', () => {
  const fetch = vi.fn()
  let userAgent = DESKTOP
  let quickLook = false

  beforeEach(() => {
    locale.value = 'en'
    vi.stubGlobal('fetch', fetch)
    vi.spyOn(navigator, 'userAgent', 'get').mockImplementation(() => userAgent)
    const create = document.createElement.bind(document)
    vi.spyOn(document, 'createElement').mockImplementation((tag: string, options?: ElementCreationOptions) => {
      const element = create(tag, options)
      if (tag === 'a') Object.defineProperty(element, 'relList', { value: { supports: (token: string) => quickLook && token === 'ar' } })
      return element
    })
  })
  afterEach(() => {
    stopPreparing('task-1')
    vi.restoreAllMocks()
    vi.unstubAllGlobals()
    fetch.mockReset()
    userAgent = DESKTOP
    quickLook = false
    location.hash = ''
  })

  const mountButton = async (formats: FormatEntry[]) => {
    const ArButton = (await import('../src/components/ArButton.vue')).default
    const wrapper = mount(ArButton, {
      props: {
        taskId: 'task-1',
        title: 'Task 0000beef',
        formats,
        modelUrl: 'http://kiln/files/reconstruction/task-1/model.glb',
        imageUrl: 'http://kiln/files/reconstruction/task-1/preview.png',
        selfLink: 'http://kiln/api/v1/tasks/task-1',
      },
    })
    await flushPromises()
    return wrapper
  }
  const opaque = () => ({ type: 'opaqueredirect', status: 0, headers: new Headers(), text: async () => '' })

  it('is not there on a desktop', async () => {
    const wrapper = await mountButton([entry({}), usdz({})])
    expect(wrapper.find('[data-testid="ar"]').exists()).toBe(false)
    expect(fetch).not.toHaveBeenCalled()
  })

  it('on iOS asks for the USDZ at once, says it is preparing, then links it with the preview as its one child', async () => {
    userAgent = IPHONE
    quickLook = true
    let answer: (value: unknown) => void = () => undefined
    fetch.mockReturnValueOnce(new Promise((resolve) => (answer = resolve)))
    const wrapper = await mountButton([entry({}), usdz({})])
    expect(wrapper.get('[data-testid="ar"]').attributes('data-platform')).toBe('quick-look')
    expect(fetch).toHaveBeenCalledTimes(1)
    expect(fetch.mock.calls[0]![0]).toBe('/api/v1/tasks/task-1/result?format=usdz')
    expect(fetch.mock.calls[0]![1]).toMatchObject({ redirect: 'manual' })
    expect(wrapper.get('[data-testid="ar-preparing"]').text()).toBe('Preparing AR…')
    expect(wrapper.find('a[rel="ar"]').exists()).toBe(false)
    answer(opaque())
    await flushPromises()
    expect(wrapper.emitted('changed')).toHaveLength(1)
    // The page reads the result again, which lists the stored USDZ.
    await wrapper.setProps({ formats: [entry({}), usdz({ status: 'ready', size: 5000, url: 'http://kiln/files/reconstruction/task-1/model.usdz' })] })
    const link = wrapper.get('a[rel="ar"]')
    expect(link.attributes('href')).toBe(`${location.origin}/files/reconstruction/task-1/model.usdz`)
    expect(link.element.children).toHaveLength(1)
    expect(link.element.firstElementChild?.tagName).toBe('IMG')
    expect(link.get('img').attributes('src')).toBe(`${location.origin}/files/reconstruction/task-1/preview.png`)
    expect(link.get('img').attributes('alt')).toBe('View in AR')
    expect(fetch).toHaveBeenCalledTimes(1)
  })

  it('on iOS says why when the USDZ cannot be made', async () => {
    userAgent = IPHONE
    quickLook = true
    fetch.mockResolvedValueOnce(
      new Response(JSON.stringify({ error: { code: 'model_too_large', message: 'The model has 6000000 triangles; the limit is 5000000.' } }), {
        status: 422,
      }),
    )
    const wrapper = await mountButton([entry({}), usdz({})])
    expect(wrapper.get('[data-testid="ar-unavailable"]').text()).toBe(
      'AR is not available for this model: The model has 6000000 triangles; the limit is 5000000.',
    )
    expect(wrapper.emitted('changed')).toBeUndefined()
  })

  it('on iOS does not ask for a USDZ that failed before', async () => {
    userAgent = IPHONE
    quickLook = true
    const wrapper = await mountButton([entry({}), usdz({ status: 'failed', error: { code: 'conversion_failed', message: 'Unreadable.' } })])
    expect(fetch).not.toHaveBeenCalled()
    expect(wrapper.get('[data-testid="ar-unavailable"]').text()).toBe('AR is not available for this model: Unreadable.')
  })

  it('on Android opens Scene Viewer with the compatible GLB’s absolute URL', async () => {
    userAgent = PIXEL
    const core = entry({ format: 'glb-core', file: 'model.core.glb', url: 'http://kiln/files/reconstruction/task-1/model.core.glb' })
    const wrapper = await mountButton([entry({}), core, usdz({})])
    const link = wrapper.get('[data-testid="ar-scene-viewer"]')
    expect(link.text()).toBe('View in AR')
    const href = link.attributes('href') ?? ''
    expect(href.startsWith('intent://arvr.google.com/scene-viewer/1.2?mode=ar_preferred&title=Task%200000beef&file=')).toBe(true)
    expect(href).toContain(`file=${encodeURIComponent(`${location.origin}/files/reconstruction/task-1/model.core.glb`)}#Intent;`)
    // No USDZ is made for Android.
    expect(fetch).not.toHaveBeenCalled()
    // Back from the fallback: the phone has no AR.
    location.hash = NO_AR_HASH
    window.dispatchEvent(new HashChangeEvent('hashchange'))
    await flushPromises()
    expect(wrapper.get('[data-testid="ar-none"]').text()).toBe('AR is not available on this phone.')
    expect(wrapper.find('[data-testid="ar-scene-viewer"]').exists()).toBe(false)
  })

  it('on Android falls back to the model itself', async () => {
    userAgent = PIXEL
    const wrapper = await mountButton([entry({})])
    expect(wrapper.get('[data-testid="ar-scene-viewer"]').attributes('href')).toContain(
      `file=${encodeURIComponent(`${location.origin}/files/reconstruction/task-1/model.glb`)}#Intent;`,
    )
  })
})

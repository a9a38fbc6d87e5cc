// The download menu and `?format=` with a scripted server: the answers (303 as the
// browser shows it with `redirect: 'manual'`, 202 with Retry-After, 422, 503), asking
// once for a format whatever asks for it, and the menu's rows: labels in both
// languages, sizes, "Prepare", the wait, the link and the reasons.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError, askFormat, type FormatAnswer } from '../src/api/client'
import type { FormatEntry } from '../src/api/types'
import { locale } from '../src/i18n'
import {
  BUSY_TRIES,
  downloadFileName,
  failureOf,
  isPreparing,
  labelKey,
  prepare,
  prepareOnce,
  readyFormat,
  stopPreparing,
} from '../src/lib/downloads'

const fetch = vi.fn()
const opaque = () => ({ type: 'opaqueredirect', status: 0, ok: false, headers: new Headers(), text: async () => '' }) as unknown as Response
const answer = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(body === null ? null : JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } })
const refusal = (status: number, code: string, message: string, headers: Record<string, string> = {}) =>
  answer(status, { error: { code, message } }, headers)

beforeEach(() => {
  locale.value = 'en'
  vi.stubGlobal('fetch', fetch)
})
afterEach(() => {
  stopPreparing('task-1')
  vi.useRealTimers()
  vi.unstubAllGlobals()
  fetch.mockReset()
})

describe('asking for a format', () => {
  it('does not follow the redirect, and takes the 303 for "ready" however the client shows it', async () => {
    fetch.mockResolvedValueOnce(opaque())
    expect(await askFormat('task-1', 'stl')).toEqual({ kind: 'ready' })
    expect(fetch.mock.calls[0]![0]).toBe('/api/v1/tasks/task-1/result?format=stl')
    expect(fetch.mock.calls[0]![1]).toMatchObject({ redirect: 'manual', credentials: 'same-origin' })
    fetch.mockResolvedValueOnce(answer(303, { name: 'model.stl' }, { Location: '/files/x/model.stl' }))
    expect(await askFormat('task-1', 'stl')).toEqual({ kind: 'ready' })
    // A client that followed it anyway got the file.
    fetch.mockResolvedValueOnce(new Response('solid', { status: 200 }))
    expect(await askFormat('task-1', 'stl-mm')).toEqual({ kind: 'ready' })
    expect(fetch.mock.calls[2]![0]).toBe('/api/v1/tasks/task-1/result?format=stl-mm')
  })

  it('reads 202 as "being made, ask again after Retry-After"', async () => {
    fetch.mockResolvedValueOnce(answer(202, { format: 'usdz', status: 'pending' }, { 'Retry-After': '3' }))
    expect(await askFormat('task-1', 'usdz')).toEqual({ kind: 'pending', retryAfter: 3 })
    fetch.mockResolvedValueOnce(answer(202, { format: 'usdz', status: 'pending' }))
    expect(await askFormat('task-1', 'usdz')).toEqual({ kind: 'pending', retryAfter: 2 })
  })

  it('reads 503 converter_busy as "ask again later", and throws the other refusals', async () => {
    fetch.mockResolvedValueOnce(refusal(503, 'converter_busy', 'Too many conversions are waiting; retry later.', { 'Retry-After': '5' }))
    const busy = (await askFormat('task-1', 'ply')) as Extract<FormatAnswer, { kind: 'busy' }>
    expect(busy.kind).toBe('busy')
    expect(busy.retryAfter).toBe(5)
    expect(busy.error.code).toBe('converter_busy')
    fetch.mockResolvedValueOnce(refusal(422, 'conversion_failed', 'The model uses KHR_draco_mesh_compression, which kiln cannot read.'))
    await expect(askFormat('task-1', 'ply')).rejects.toMatchObject({ code: 'conversion_failed', status: 422 })
    fetch.mockResolvedValueOnce(refusal(410, 'artifact_expired', 'This file was deleted after the retention period.'))
    await expect(askFormat('task-1', 'ply')).rejects.toMatchObject({ code: 'artifact_expired', status: 410 })
    // Another 503 (a proxy's) is an error too.
    fetch.mockResolvedValueOnce(new Response('<html>bad gateway</html>', { status: 503 }))
    await expect(askFormat('task-1', 'ply')).rejects.toMatchObject({ code: 'http_error', status: 503 })
    fetch.mockRejectedValueOnce(new TypeError('Failed to fetch'))
    await expect(askFormat('task-1', 'ply')).rejects.toMatchObject({ code: 'network_error' })
  })
})

describe('preparing a format', () => {
  const script = (...answers: (FormatAnswer | ApiError)[]) => {
    const ask = vi.fn(async () => {
      const next = answers.shift()
      if (!next) throw new Error('asked once too often')
      if (next instanceof ApiError) throw next
      return next
    })
    const slept: number[] = []
    const sleep = async (ms: number) => void slept.push(ms)
    return { ask, sleep, slept }
  }

  it('asks again after each Retry-After until the file is there', async () => {
    const { ask, sleep, slept } = script({ kind: 'pending', retryAfter: 2 }, { kind: 'pending', retryAfter: 0 }, { kind: 'ready' })
    await prepare('task-1', 'usdz', { ask, sleep })
    expect(ask).toHaveBeenCalledTimes(3)
    expect(ask.mock.calls.map((c) => (c as unknown[])[1])).toEqual(['usdz', 'usdz', 'usdz'])
    // At least a second between two questions.
    expect(slept).toEqual([2000, 1000])
  })

  it('waits out a busy converter, but not forever', async () => {
    const busy = { kind: 'busy' as const, retryAfter: 4, error: new ApiError('converter_busy', 'Too many conversions are waiting; retry later.', 503, 4) }
    const a = script(busy, busy, { kind: 'pending', retryAfter: 2 }, { kind: 'ready' })
    await prepare('task-1', 'stl', a)
    expect(a.slept).toEqual([4000, 4000, 2000])
    const b = script(...Array.from({ length: BUSY_TRIES }, () => busy))
    await expect(prepare('task-1', 'stl', b)).rejects.toBe(busy.error)
    expect(b.ask).toHaveBeenCalledTimes(BUSY_TRIES)
  })

  it('stops at a refusal', async () => {
    const error = new ApiError('model_too_large', 'Too big.', 422)
    const { ask, sleep } = script({ kind: 'pending', retryAfter: 2 }, error)
    await expect(prepare('task-1', 'usdz', { ask, sleep })).rejects.toBe(error)
  })

  it('asks once for what two parts of the page want, and keeps the failure for both', async () => {
    let release: (a: FormatAnswer) => void = () => undefined
    const ask = vi.fn(() => new Promise<FormatAnswer>((resolve) => (release = resolve)))
    const first = prepareOnce('task-1', 'usdz', { ask })
    const second = prepareOnce('task-1', 'usdz', { ask })
    expect(second).toBe(first)
    expect(isPreparing('task-1', 'usdz')).toBe(true)
    expect(isPreparing('task-1', 'stl')).toBe(false)
    release({ kind: 'ready' })
    await first
    expect(ask).toHaveBeenCalledTimes(1)
    expect(isPreparing('task-1', 'usdz')).toBe(false)

    const error = new ApiError('conversion_failed', 'Unreadable.', 422)
    await expect(prepareOnce('task-1', 'ply', { ask: async () => Promise.reject(error) })).rejects.toBe(error)
    expect(failureOf('task-1', 'ply')).toBe(error)
    expect(failureOf('task-2', 'ply')).toBeNull()
    stopPreparing('task-1')
    expect(failureOf('task-1', 'ply')).toBeNull()
  })

  it('stops asking when the page is left', async () => {
    vi.useFakeTimers()
    fetch.mockResolvedValue(answer(202, { format: 'usdz', status: 'pending' }, { 'Retry-After': '2' }))
    const flight = prepareOnce('task-1', 'usdz')
    const settled = flight.catch((e: unknown) => e)
    await vi.advanceTimersByTimeAsync(0)
    expect(fetch).toHaveBeenCalledTimes(1)
    stopPreparing('task-1')
    expect(await settled).toMatchObject({ code: 'aborted' })
    await vi.advanceTimersByTimeAsync(10_000)
    expect(fetch).toHaveBeenCalledTimes(1)
    // An abort is not a failure to show.
    expect(failureOf('task-1', 'usdz')).toBeNull()
  })
})

describe('the rows', () => {
  it('have a label for every format the server makes, and a name with the task’s id', () => {
    expect(labelKey('stl-mm')).toBe('downloads.formats.stl-mm')
    expect(labelKey('fbx')).toBeNull()
    expect(downloadFileName('0190abcd-0000-7000-8000-0000deadbeef', 'model.stl')).toBe('0190abcd-0000-7000-8000-0000deadbeef-model.stl')
    const ready = entry({ format: 'stl', status: 'ready', url: '/files/s' })
    expect(readyFormat([ready], 'stl')).toBe(ready)
    expect(readyFormat([{ ...ready, url: null }], 'stl')).toBeNull()
    expect(readyFormat([{ ...ready, status: 'available' }], 'stl')).toBeNull()
    expect(readyFormat(undefined, 'stl')).toBeNull()
  })
})

function entry(over: Partial<FormatEntry>): FormatEntry {
  return { format: 'glb', file: 'model.glb', content_type: 'model/gltf-binary', status: 'ready', size: 1_261_264, url: 'http://kiln/files/reconstruction/task-1/model.glb', ...over }
}

const FORMATS: FormatEntry[] = [
  entry({}),
  entry({ format: 'glb-meshopt', file: 'model.meshopt.glb', size: 270_336, url: 'http://kiln/files/reconstruction/task-1/model.meshopt.glb' }),
  entry({ format: 'preview', file: 'preview.png', content_type: 'image/png', size: 40_000, url: 'http://kiln/files/reconstruction/task-1/preview.png' }),
  entry({ format: 'obj', file: 'output3d.zip', content_type: 'application/zip', size: 900_000, url: 'http://kiln/files/reconstruction/task-1/output3d.zip' }),
  entry({ format: 'stl', file: 'model.stl', content_type: 'model/stl', status: 'available', size: null, url: null }),
  entry({ format: 'stl-mm', file: 'model-mm.stl', content_type: 'model/stl', status: 'pending', size: null, url: null }),
  entry({ format: 'ply', file: 'model.ply', content_type: 'application/x-ply', status: 'failed', size: null, url: null, error: { code: 'conversion_failed', message: 'The texture could not be decoded.' } }),
  entry({ format: 'usdz', file: 'model.usdz', content_type: 'model/vnd.usdz+zip', status: 'available', size: null, url: null }),
  entry({ format: 'cutout', file: 'pixel_images.png', content_type: 'image/png', size: 120_000, url: 'https://cdn.example.com/reconstruction/task-1/pixel_images.png?sig=1' }),
]

describe('the download menu', () => {
  const mountMenu = async (formats = FORMATS) => {
    const DownloadMenu = (await import('../src/components/DownloadMenu.vue')).default
    const wrapper = mount(DownloadMenu, { props: { taskId: 'task-1', formats, selfLink: 'http://kiln/api/v1/tasks/task-1' } })
    await flushPromises()
    return wrapper
  }
  const row = (wrapper: Awaited<ReturnType<typeof mountMenu>>, format: string) => wrapper.get(`[data-testid="download-row"][data-format="${format}"]`)

  it('lists every format with its size, a link named after the task, Prepare or the reason', async () => {
    // The pending STL (mm) is followed at once; it stays pending here.
    fetch.mockReturnValue(new Promise(() => undefined))
    const wrapper = await mountMenu()
    expect(wrapper.findAll('[data-testid="download-row"]').map((r) => r.attributes('data-row'))).toEqual([
      'ready', 'ready', 'ready', 'ready', 'available', 'preparing', 'failed', 'available', 'ready',
    ])
    const glb = row(wrapper, 'glb').get('a')
    expect(glb.text()).toBe('GLB (original)')
    expect(glb.attributes('href')).toBe(`${location.origin}/files/reconstruction/task-1/model.glb`)
    expect(glb.attributes('download')).toBe('task-1-model.glb')
    expect(row(wrapper, 'glb').text()).toContain('1.2 MB')
    expect(row(wrapper, 'glb-meshopt').text()).toBe('GLB compressed (meshopt)264 KB')
    expect(row(wrapper, 'obj').get('a').text()).toBe('OBJ + MTL + texture (.zip)')
    expect(row(wrapper, 'obj').get('a').attributes('download')).toBe('task-1-output3d.zip')
    // A file elsewhere (a CDN, object storage) keeps its URL.
    expect(row(wrapper, 'cutout').get('a').attributes('href')).toBe('https://cdn.example.com/reconstruction/task-1/pixel_images.png?sig=1')
    expect(row(wrapper, 'stl').text()).toBe('STL (m)Prepare')
    expect(row(wrapper, 'stl-mm').text()).toBe('STL (mm)Preparing…')
    expect(row(wrapper, 'ply').get('[data-testid="download-error"]').text()).toBe('The texture could not be decoded.')
    expect(row(wrapper, 'ply').find('button').exists()).toBe(false)
    expect(row(wrapper, 'usdz').text()).toBe('USDZ (AR)Prepare')
    expect(fetch).toHaveBeenCalledTimes(1)
    expect(fetch.mock.calls[0]![0]).toBe('/api/v1/tasks/task-1/result?format=stl-mm')
  })

  it('says the labels and reasons in Chinese', async () => {
    locale.value = 'zh-CN'
    fetch.mockReturnValue(new Promise(() => undefined))
    const wrapper = await mountMenu()
    expect(wrapper.get('h2').text()).toBe('下载')
    expect(row(wrapper, 'glb').get('a').text()).toBe('GLB（原始）')
    expect(row(wrapper, 'stl').text()).toBe('STL（米）生成')
    expect(row(wrapper, 'ply').get('[data-testid="download-error"]').text()).toBe('无法读取或转换该模型。')
  })

  it('prepares a format on request: waits while it is made, then announces it', async () => {
    vi.useFakeTimers()
    const wrapper = await mountMenu([entry({}), FORMATS[4]!])
    fetch
      .mockResolvedValueOnce(answer(202, { format: 'stl', status: 'pending' }, { 'Retry-After': '2' }))
      .mockResolvedValueOnce(opaque())
    await row(wrapper, 'stl').get('[data-testid="prepare"]').trigger('click')
    await flushPromises()
    expect(row(wrapper, 'stl').attributes('data-row')).toBe('preparing')
    expect(row(wrapper, 'stl').text()).toBe('STL (m)Preparing…')
    expect(fetch).toHaveBeenCalledTimes(1)
    await vi.advanceTimersByTimeAsync(2000)
    await flushPromises()
    expect(fetch).toHaveBeenCalledTimes(2)
    expect(fetch.mock.calls.map((c) => c[0])).toEqual(['/api/v1/tasks/task-1/result?format=stl', '/api/v1/tasks/task-1/result?format=stl'])
    expect(wrapper.emitted('changed')).toHaveLength(1)
    // The page reads the result again: the row becomes a link with its size.
    await wrapper.setProps({ formats: [entry({}), entry({ format: 'stl', file: 'model.stl', size: 2_806_484, url: 'http://kiln/files/reconstruction/task-1/model.stl' })] })
    expect(row(wrapper, 'stl').get('a').attributes('download')).toBe('task-1-model.stl')
    expect(row(wrapper, 'stl').text()).toBe('STL (m)2.7 MB')
  })

  it('shows why a format cannot be made, without a button when asking again changes nothing', async () => {
    const wrapper = await mountMenu([entry({}), FORMATS[7]!])
    fetch.mockResolvedValueOnce(refusal(422, 'model_too_large', 'The model has 6000000 triangles; USDZ takes at most 5000000.'))
    await row(wrapper, 'usdz').get('[data-testid="prepare"]').trigger('click')
    await flushPromises()
    expect(row(wrapper, 'usdz').attributes('data-row')).toBe('failed')
    expect(row(wrapper, 'usdz').get('[data-testid="download-error"]').text()).toBe('The model has 6000000 triangles; USDZ takes at most 5000000.')
    expect(row(wrapper, 'usdz').find('button').exists()).toBe(false)
    expect(wrapper.emitted('changed')).toBeUndefined()
  })

  it('offers to try again after a failure that may pass', async () => {
    const wrapper = await mountMenu([entry({}), FORMATS[4]!])
    fetch.mockRejectedValueOnce(new TypeError('Failed to fetch'))
    await row(wrapper, 'stl').get('[data-testid="prepare"]').trigger('click')
    await flushPromises()
    expect(row(wrapper, 'stl').attributes('data-row')).toBe('retry')
    expect(row(wrapper, 'stl').get('button').text()).toBe('Try again')
    fetch.mockResolvedValueOnce(opaque())
    await row(wrapper, 'stl').get('button').trigger('click')
    await flushPromises()
    expect(wrapper.emitted('changed')).toHaveLength(1)
    expect(row(wrapper, 'stl').find('[data-testid="download-error"]').exists()).toBe(false)
  })
})

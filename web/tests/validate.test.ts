import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { describe, expect, it } from 'vitest'
import { checkPicture, DEFAULT_LIMITS, dimensions, sniff, type Decoder } from '../src/lib/validate'
import { locale, t } from '../src/i18n'

// The fixtures shared by every part of kiln: ../shared/fixtures/images from the repository
// (the tests run in web/).
const FIXTURES = resolve(process.cwd(), '..', '../shared/fixtures/images') + '/'
const fixture = (name: string) => new File([readFileSync(FIXTURES + name)], name.split('/').pop() ?? name)

/** Stands in for createImageBitmap (happy-dom has none): accepts anything with a header. */
const decodes: Decoder = async () => ({ width: 10, height: 10 })
const fails: Decoder = async () => {
  throw new Error('cannot decode')
}

// The server's sentences for the same refusals (src/input.rs, src/error.rs), word for word.
const SERVER = {
  empty_file: 'The uploaded file is empty.',
  file_too_large: 'File too large: the limit is 10 MB.',
  unsupported_image_format: 'Unsupported image format: send a JPEG, PNG, WEBP picture.',
  corrupt_image: 'The picture is damaged or incomplete and cannot be read.',
  bomb: 'The picture is 50000×50000 pixels; at most 40 megapixels are accepted.',
}

async function refusal(name: string, decode: Decoder = decodes) {
  const checked = await checkPicture(fixture(name), DEFAULT_LIMITS, decode)
  if (checked.ok) throw new Error(`${name} was accepted`)
  locale.value = 'en'
  return { code: checked.problem.code, text: t(`errors.${checked.problem.code}`, checked.problem.params) }
}

describe('format sniffing', () => {
  it('tells the accepted formats from their first bytes, whatever the name', () => {
    expect(sniff(new Uint8Array([0xff, 0xd8, 0xff, 0xe0]))).toBe('jpeg')
    expect(sniff(new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))).toBe('png')
    expect(sniff(new TextEncoder().encode('RIFF\0\0\0\0WEBPVP8 '))).toBe('webp')
    expect(sniff(new TextEncoder().encode('RIFF\0\0\0\0WAVEfmt '))).toBeNull()
    expect(sniff(new TextEncoder().encode('GIF89a'))).toBeNull()
    expect(sniff(new Uint8Array([0xff, 0xd8]))).toBeNull()
    expect(sniff(new Uint8Array([]))).toBeNull()
  })
})

describe('header dimensions', () => {
  const head = (name: string) => new Uint8Array(readFileSync(FIXTURES + name))
  it('reads PNG, JPEG and WebP headers', () => {
    expect(dimensions(head('large-4096x3072.jpg'), 'jpeg')).toEqual({ width: 4096, height: 3072 })
    expect(dimensions(head('invalid/bomb-50000x50000.png'), 'png')).toEqual({ width: 50000, height: 50000 })
    for (const [name, format] of [['vase.png', 'png'], ['mug.jpg', 'jpeg'], ['toy.webp', 'webp']] as const) {
      const size = dimensions(head(name), format)
      expect(size, name).not.toBeNull()
      expect(size!.width * size!.height, name).toBeGreaterThan(100 * 100)
    }
  })
  it('gives up rather than guess on a header it cannot read', () => {
    expect(dimensions(new Uint8Array([0xff, 0xd8, 0xff, 0xda, 0, 4, 0, 0, 0, 0, 0, 0]), 'jpeg')).toBeNull()
    expect(dimensions(new Uint8Array(10), 'png')).toBeNull()
  })
})

describe('checkPicture', () => {
  it('accepts the good fixtures', async () => {
    for (const name of ['vase.png', 'mug.jpg', 'toy.webp', 'large-4096x3072.jpg']) {
      const checked = await checkPicture(fixture(name), DEFAULT_LIMITS, decodes)
      expect(checked.ok, name).toBe(true)
    }
  })

  it('refuses each invalid fixture with the server’s code and sentence', async () => {
    expect(await refusal('invalid/empty.jpg')).toEqual({ code: 'empty_file', text: SERVER.empty_file })
    expect(await refusal('invalid/over-10mb.png')).toEqual({ code: 'file_too_large', text: SERVER.file_too_large })
    expect(await refusal('invalid/not-supported.gif')).toEqual({
      code: 'unsupported_image_format',
      text: SERVER.unsupported_image_format,
    })
    expect(await refusal('invalid/text-named.png')).toEqual({
      code: 'unsupported_image_format',
      text: SERVER.unsupported_image_format,
    })
    expect(await refusal('invalid/bomb-50000x50000.png')).toEqual({ code: 'image_too_many_pixels', text: SERVER.bomb })
    expect(await refusal('invalid/truncated.png', fails)).toEqual({ code: 'corrupt_image', text: SERVER.corrupt_image })
  })

  it('checks in the server’s order: size before format, header before decoding', async () => {
    let decoded = false
    const spy: Decoder = async () => {
      decoded = true
      return { width: 1, height: 1 }
    }
    // A bomb is refused from its header, without being decoded.
    await checkPicture(fixture('invalid/bomb-50000x50000.png'), DEFAULT_LIMITS, spy)
    expect(decoded).toBe(false)
    // Eleven MiB of GIF is "too large", not "unsupported".
    const big = new File([new Uint8Array(11 * 1024 * 1024).fill(0x47)], 'x.gif')
    const checked = await checkPicture(big, DEFAULT_LIMITS, spy)
    expect(checked.ok ? null : checked.problem.code).toBe('file_too_large')
  })

  it('follows the server’s limits when they differ from the defaults', async () => {
    const limits = { ...DEFAULT_LIMITS, max_bytes: 1536 * 1024, formats: ['png'] }
    const jpeg = await checkPicture(fixture('mug.jpg'), limits, decodes)
    expect(jpeg.ok ? null : jpeg.problem).toEqual({ code: 'unsupported_image_format', params: { formats: 'PNG' } })
    const big = await checkPicture(new File([new Uint8Array(2 * 1024 * 1024)], 'a.png'), limits, decodes)
    expect(big.ok ? null : big.problem.params).toEqual({ limit: '1.5 MB' })
  })

  it('says "corrupt" for a zero-sized side, as the server does', async () => {
    const png = new Uint8Array(readFileSync(FIXTURES + 'vase.png'))
    png.set([0, 0, 0, 0], 16)
    const checked = await checkPicture(new File([png], 'zero.png'), DEFAULT_LIMITS, decodes)
    expect(checked.ok ? null : checked.problem.code).toBe('corrupt_image')
  })
})

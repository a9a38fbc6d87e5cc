// Checks a picture in the page before it is sent, in the server's order and with its
// words (src/input.rs): empty → too large → format from the bytes → size from the
// header → decodable. A refusal here saves a 10 MB upload on a phone; anything the page
// cannot tell (an odd JPEG layout) is left to the server, which checks again anyway.
import type { Limits } from '../api/types'

export type UploadLimits = Limits['upload']
export type Format = 'jpeg' | 'png' | 'webp'

export const DEFAULT_LIMITS: UploadLimits = {
  max_bytes: 10 * 1024 * 1024,
  formats: ['jpeg', 'png', 'webp'],
  max_pixels: 40_000_000,
  max_side: 2048,
  max_prompt_chars: 1024,
  max_decode_memory: 160 * 1024 * 1024,
}

export interface Problem {
  code: 'empty_file' | 'file_too_large' | 'unsupported_image_format' | 'corrupt_image' | 'image_too_many_pixels'
  /** Values for the message template (errors.<code> in the translation files). */
  params: Record<string, string | number>
}

export type Checked = { ok: true; format: Format; width: number; height: number } | { ok: false; problem: Problem }

/** The format from the first bytes, as the server's `image::guess_format` tells it. */
export function sniff(head: Uint8Array): Format | null {
  const starts = (bytes: number[], at = 0) => bytes.every((b, i) => head[at + i] === b)
  if (starts([0xff, 0xd8, 0xff])) return 'jpeg'
  if (starts([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'png'
  if (starts([0x52, 0x49, 0x46, 0x46]) && starts([0x57, 0x45, 0x42, 0x50], 8)) return 'webp'
  return null
}

const u16be = (b: Uint8Array, i: number) => ((b[i] ?? 0) << 8) | (b[i + 1] ?? 0)
const u16le = (b: Uint8Array, i: number) => (b[i] ?? 0) | ((b[i + 1] ?? 0) << 8)
const u24le = (b: Uint8Array, i: number) => u16le(b, i) | ((b[i + 2] ?? 0) << 16)
const u32be = (b: Uint8Array, i: number) => ((b[i] ?? 0) * 0x1000000 + u16be(b, i + 1) * 0x100 + (b[i + 3] ?? 0))
const ascii = (b: Uint8Array, i: number, n: number) => String.fromCharCode(...b.subarray(i, i + n))

/**
 * Width and height from the header; `null` when this reader cannot find them (the caller
 * then relies on decoding). Never allocates pixels, so a decompression bomb is caught
 * here as on the server.
 */
export function dimensions(bytes: Uint8Array, format: Format): { width: number; height: number } | null {
  switch (format) {
    case 'png':
      if (bytes.length < 24 || ascii(bytes, 12, 4) !== 'IHDR') return null
      return { width: u32be(bytes, 16), height: u32be(bytes, 20) }
    case 'webp': {
      const chunk = ascii(bytes, 12, 4)
      if (chunk === 'VP8X' && bytes.length >= 30) return { width: u24le(bytes, 24) + 1, height: u24le(bytes, 27) + 1 }
      if (chunk === 'VP8L' && bytes.length >= 25 && bytes[20] === 0x2f) {
        const bits = (bytes[21] ?? 0) | ((bytes[22] ?? 0) << 8) | ((bytes[23] ?? 0) << 16) | ((bytes[24] ?? 0) << 24)
        return { width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 }
      }
      if (chunk === 'VP8 ' && bytes.length >= 30 && bytes[23] === 0x9d && bytes[24] === 0x01 && bytes[25] === 0x2a) {
        return { width: u16le(bytes, 26) & 0x3fff, height: u16le(bytes, 28) & 0x3fff }
      }
      return null
    }
    case 'jpeg': {
      let i = 2
      while (i + 9 < bytes.length) {
        if (bytes[i] !== 0xff) return null
        const marker = bytes[i + 1] ?? 0
        if (marker === 0xff) {
          i += 1 // fill byte
          continue
        }
        if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
          i += 2
          continue
        }
        // Start of frame: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
        if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
          return { height: u16be(bytes, i + 5), width: u16be(bytes, i + 7) }
        }
        if (marker === 0xda || marker === 0xd9) return null // scan data before any frame header
        i += 2 + u16be(bytes, i + 2)
      }
      return null
    }
  }
}

export function formatList(formats: readonly string[]): string {
  return formats.map((f) => f.toUpperCase()).join(', ')
}

/** How many bytes of the file are read for the header checks (a JPEG's EXIF comes first). */
const HEAD_BYTES = 256 * 1024

export type Decoder = (file: Blob) => Promise<{ width: number; height: number }>

/** The browser's decoder: the same check as the server's full decode, off the main thread. */
export const browserDecoder: Decoder = async (file) => {
  const bitmap = await createImageBitmap(file)
  const size = { width: bitmap.width, height: bitmap.height }
  bitmap.close()
  return size
}

export async function checkPicture(file: Blob, limits: UploadLimits = DEFAULT_LIMITS, decode: Decoder = browserDecoder): Promise<Checked> {
  const fail = (code: Problem['code'], params: Problem['params'] = {}): Checked => ({ ok: false, problem: { code, params } })
  if (file.size === 0) return fail('empty_file')
  if (file.size > limits.max_bytes) return fail('file_too_large', { limit: humanSizeOf(limits.max_bytes) })
  const head = new Uint8Array(await file.slice(0, HEAD_BYTES).arrayBuffer())
  const format = sniff(head)
  if (!format || !limits.formats.includes(format)) {
    return fail('unsupported_image_format', { formats: formatList(limits.formats) })
  }
  const tooMany = (width: number, height: number) =>
    fail('image_too_many_pixels', { width, height, megapixels: (limits.max_pixels / 1e6).toFixed(0) })
  const header = dimensions(head, format)
  if (header) {
    if (header.width === 0 || header.height === 0) return fail('corrupt_image')
    if (header.width * header.height > limits.max_pixels) return tooMany(header.width, header.height)
  }
  let decoded: { width: number; height: number }
  try {
    decoded = await decode(file)
  } catch {
    return fail('corrupt_image')
  }
  if (!header && decoded.width * decoded.height > limits.max_pixels) return tooMany(decoded.width, decoded.height)
  return { ok: true, format, width: header?.width ?? decoded.width, height: header?.height ?? decoded.height }
}

/** The server's size wording ("10 MB"); duplicated from i18n to keep this module pure. */
function humanSizeOf(bytes: number): string {
  const mb = 1024 * 1024
  if (bytes >= mb && bytes % mb === 0) return `${bytes / mb} MB`
  if (bytes >= mb) return `${(bytes / mb).toFixed(1)} MB`
  return `${Math.ceil(bytes / 1024)} KB`
}

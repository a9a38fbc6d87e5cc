import { describe, expect, it } from 'vitest'
import en from '../src/i18n/en'
import zh from '../src/i18n/zh-CN'
import { detectLocale, format, humanSize, locale, ordinal, t } from '../src/i18n'

function keys(node: unknown, prefix = ''): string[] {
  if (typeof node === 'string') return [prefix]
  return Object.entries(node as Record<string, unknown>).flatMap(([k, v]) => keys(v, prefix ? `${prefix}.${k}` : k))
}

describe('translations', () => {
  it('have the same keys in both languages, and the same placeholders', () => {
    expect(keys(zh).sort()).toEqual(keys(en).sort())
    const placeholders = (s: string) => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort()
    for (const key of keys(en)) {
      const get = (o: unknown) => key.split('.').reduce((n: any, k) => n[k], o) as string
      expect(placeholders(get(zh)), key).toEqual(placeholders(get(en)))
    }
  })

  it('pick the language from the stored choice, then the browser', () => {
    expect(detectLocale(null, ['zh-TW', 'en'])).toBe('zh-CN')
    expect(detectLocale(null, ['fr', 'en-GB'])).toBe('en')
    expect(detectLocale(null, ['fr'])).toBe('en')
    expect(detectLocale('en', ['zh-CN'])).toBe('en')
    expect(detectLocale('zh-CN', ['en'])).toBe('zh-CN')
    expect(detectLocale('klingon', ['zh'])).toBe('zh-CN')
  })

  it('switch at run time', () => {
    locale.value = 'en'
    expect(t('task.queued', { ordinal: ordinal(2) })).toBe('2nd in line')
    locale.value = 'zh-CN'
    expect(t('task.queued', { ordinal: ordinal(2) })).toBe('排队中：第 2 位')
    locale.value = 'en'
  })

  it('write English ordinals', () => {
    expect([1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 112].map((n) => ordinal(n, 'en'))).toEqual([
      '1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '23rd', '101st', '112th',
    ])
  })

  it('write sizes as the server does', () => {
    expect(humanSize(10 * 1024 * 1024)).toBe('10 MB')
    expect(humanSize(1.5 * 1024 * 1024)).toBe('1.5 MB')
    expect(humanSize(1000)).toBe('1 KB')
  })

  it('leave unknown placeholders visible', () => {
    expect(format('{a} and {b}', { a: 1 })).toBe('1 and {b}')
  })
})

describe('every string the page uses', () => {
  it('is in both languages: each literal key passed to t() exists', async () => {
    const { readdirSync, readFileSync, statSync } = await import('node:fs')
    const { join } = await import('node:path')
    const files: string[] = []
    const walk = (dir: string) => {
      for (const name of readdirSync(dir)) {
        const path = join(dir, name)
        if (statSync(path).isDirectory()) walk(path)
        else if (/\.(ts|vue)$/.test(name) && !path.includes('i18n')) files.push(path)
      }
    }
    walk(join(__dirname, '..', 'src'))
    const lookup = (messages: unknown, key: string) => key.split('.').reduce((n: any, k) => (n == null ? n : n[k]), messages)
    const missing: string[] = []
    let seen = 0
    for (const file of files) {
      const source = readFileSync(file, 'utf8')
      // t('a.b'), and i18n keys held in strings such as 'form.required' or 'tokens.pastExpiry'.
      for (const match of source.matchAll(/\bt\(\s*'([a-zA-Z][\w.]*)'/g)) {
        seen++
        for (const [lang, messages] of [['en', en], ['zh-CN', zh]] as const) {
          if (typeof lookup(messages, match[1]!) !== 'string') missing.push(`${lang}: ${match[1]} (${file})`)
        }
      }
      for (const match of source.matchAll(/'((?:form|balance|tokens|auth)\.[a-zA-Z]+)'/g)) {
        for (const [lang, messages] of [['en', en], ['zh-CN', zh]] as const) {
          if (typeof lookup(messages, match[1]!) !== 'string') missing.push(`${lang}: ${match[1]} (${file})`)
        }
      }
    }
    expect(seen).toBeGreaterThan(300)
    expect(missing).toEqual([])
  })

  it('has plain words for each account error code, in both languages', () => {
    const codes = [
      'unauthorized',
      'invalid_credentials',
      'too_many_signin_attempts',
      'csrf_failed',
      'forbidden',
      'insufficient_quota',
      'insufficient_quota_details',
      'spend_cap_reached',
      'too_many_active_tasks',
      'rate_limited',
      'username_taken',
      'weak_password',
      'model_not_allowed',
      'channel_read_only',
      'file_url_invalid',
      'invalid_webhook_url',
    ]
    for (const code of codes) {
      expect(en.errors[code], code).toBeTruthy()
      expect(zh.errors[code], code).toBeTruthy()
    }
  })

  it('says the balance and the price when credits are short', async () => {
    const { ApiError } = await import('../src/api/client')
    const { describeError } = await import('../src/lib/errors')
    const short = new ApiError('insufficient_quota', 'Your balance does not cover this task’s price.', 402, null, { balance: 3, price: 10 })
    locale.value = 'en'
    expect(describeError(short).text).toBe('Your balance (3 credits) does not cover this task’s price (10 credits).')
    locale.value = 'zh-CN'
    expect(describeError(short).text).toBe('余额（3 点）不足以支付此任务（10 点）。')
    expect(describeError(new ApiError('spend_cap_reached', 'x', 402)).text).toBe('此 API 令牌的消费上限不足以支付此任务。')
    expect(describeError(new ApiError('rate_limited', 'x', 429, 12)).text).toBe('使用此 API 令牌的请求过于频繁，请放慢速度。 请在 12 秒后重试。')
    locale.value = 'en'
  })
})

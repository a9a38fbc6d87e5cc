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

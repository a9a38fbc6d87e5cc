// A small i18n layer instead of vue-i18n: vue-i18n's message compiler needs `eval`
// unless messages are precompiled by another plugin, and the page has two languages and
// a hundred strings. Messages are typed objects, so a missing key is a build error.
import { computed, ref } from 'vue'
import en, { type Messages } from './en'
import zh from './zh-CN'

export const LOCALES = [
  { code: 'zh-CN', label: '简体中文' },
  { code: 'en', label: 'English' },
] as const
export type Locale = (typeof LOCALES)[number]['code']

const catalogs: Record<Locale, Messages> = { en, 'zh-CN': zh }
const STORAGE_KEY = 'kiln.locale'

/** The reader's language: a stored choice, else the first supported browser language. */
export function detectLocale(stored: string | null, languages: readonly string[]): Locale {
  if (stored === 'en' || stored === 'zh-CN') return stored
  for (const language of languages) {
    const lower = language.toLowerCase()
    if (lower.startsWith('zh')) return 'zh-CN'
    if (lower.startsWith('en')) return 'en'
  }
  return 'en'
}

function readStored(): string | null {
  try {
    return localStorage.getItem(STORAGE_KEY)
  } catch {
    return null
  }
}

export const locale = ref<Locale>(
  detectLocale(readStored(), typeof navigator === 'undefined' ? [] : (navigator.languages ?? [navigator.language])),
)

export function setLocale(next: Locale): void {
  locale.value = next
  try {
    localStorage.setItem(STORAGE_KEY, next)
  } catch {
    // Private mode: the choice lasts for this visit only.
  }
  if (typeof document !== 'undefined') document.documentElement.lang = next
}

/** Looks a dotted key up in a catalog; `undefined` when it is missing. */
function lookup(messages: Messages, key: string): string | undefined {
  let node: unknown = messages
  for (const part of key.split('.')) {
    if (node === null || typeof node !== 'object') return undefined
    node = (node as Record<string, unknown>)[part]
  }
  return typeof node === 'string' ? node : undefined
}

export function format(template: string, params: Record<string, string | number> = {}): string {
  return template.replace(/\{(\w+)\}/g, (whole, name: string) => (name in params ? String(params[name]) : whole))
}

/** Translates `key` in the current language (English when the key is missing there). */
export function t(key: string, params?: Record<string, string | number>): string {
  const template = lookup(catalogs[locale.value], key) ?? lookup(en, key) ?? key
  return format(template, params)
}

/** Whether `key` exists (in English, which defines the keys). */
export function has(key: string): boolean {
  return lookup(en, key) !== undefined
}

/** "1st", "2nd"… in English; the plain number in Chinese, whose sentence carries 第…位. */
export function ordinal(n: number, lang: Locale = locale.value): string {
  if (lang !== 'en') return String(n)
  const rule = new Intl.PluralRules('en', { type: 'ordinal' }).select(n)
  const suffix = { one: 'st', two: 'nd', few: 'rd' }[rule as 'one' | 'two' | 'few'] ?? 'th'
  return `${n}${suffix}`
}

/** Sizes as the server writes them: "10 MB", "1.5 MB", "300 KB" (1 MB = 1024 × 1024 bytes). */
export function humanSize(bytes: number): string {
  const mb = 1024 * 1024
  if (bytes >= mb && bytes % mb === 0) return `${bytes / mb} MB`
  if (bytes >= mb) return `${(bytes / mb).toFixed(1)} MB`
  return `${Math.ceil(bytes / 1024)} KB`
}

export function duration(seconds: number): string {
  if (seconds < 60) return t('units.seconds', { value: seconds < 10 ? seconds.toFixed(1) : Math.round(seconds) })
  const whole = Math.round(seconds)
  return t('units.minutes', { m: Math.floor(whole / 60), s: whole % 60 })
}

export function dateTime(iso: string): string {
  const date = new Date(iso)
  if (Number.isNaN(date.getTime())) return iso
  return new Intl.DateTimeFormat(locale.value, { dateStyle: 'medium', timeStyle: 'short' }).format(date)
}

export function integer(n: number): string {
  return new Intl.NumberFormat(locale.value).format(n)
}

/** For templates: `const { t } = useI18n()`, re-rendered when the language changes. */
export function useI18n() {
  return { t, locale: computed(() => locale.value), setLocale, ordinal, humanSize, duration, dateTime, integer }
}

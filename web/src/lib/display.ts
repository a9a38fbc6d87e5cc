// How the console writes times, durations, credits and states, in the reader's language.
import type { Token } from '../api/types'
import { dateTime, duration, integer, locale, t } from '../i18n'

/** A time from the API (RFC 3339, or ms since the epoch), or a dash. */
export function when(value: string | number | null | undefined): string {
  if (value === null || value === undefined || value === '') return '—'
  return dateTime(typeof value === 'number' ? new Date(value).toISOString() : value)
}

/** A time to the second (attempts seconds apart), or a dash. */
export function whenExactly(value: string | null | undefined): string {
  if (!value) return '—'
  const date = new Date(value)
  if (Number.isNaN(date.getTime())) return value
  return new Intl.DateTimeFormat(locale.value, { dateStyle: 'medium', timeStyle: 'medium' }).format(date)
}

/** A short wait (a webhook's answer): milliseconds below a second, else as `ms` does. */
export function shortMs(value: number | null | undefined): string {
  if (value === null || value === undefined) return '—'
  return value < 1000 ? t('units.milliseconds', { value: Math.round(value) }) : duration(value / 1000)
}

/** Milliseconds as seconds or minutes, or a dash. */
export function ms(value: number | null | undefined): string {
  return value === null || value === undefined ? '—' : duration(value / 1000)
}

export function credits(value: number | null | undefined): string {
  return value === null || value === undefined ? '—' : integer(value)
}

/** A share from 0 to 1 as a percentage, or a dash. */
export function percent(value: number | null | undefined): string {
  if (value === null || value === undefined) return '—'
  return new Intl.NumberFormat(undefined, { style: 'percent', maximumFractionDigits: 1 }).format(value)
}

export type TokenState = 'active' | 'revoked' | 'expired'

export function tokenState(token: Token, now = Date.now()): TokenState {
  if (token.revoked_at) return 'revoked'
  if (token.expires_at && new Date(token.expires_at).getTime() <= now) return 'expired'
  return 'active'
}

/** `…abcd`: how a token is told apart without its text. */
export const tokenHint = (token: Token) => `kiln_…${token.hint}`

export const tokenLabel = (token: Token) => `${token.name} (${tokenHint(token)})`

export function tokenModels(token: Token): string {
  return token.models?.length ? token.models.join(', ') : t('tokens.anyModel')
}

// How the console writes times, durations, credits and states, in the reader's language.
import type { Token } from '../api/types'
import { dateTime, duration, integer, t } from '../i18n'

/** A time from the API (RFC 3339, or ms since the epoch), or a dash. */
export function when(value: string | number | null | undefined): string {
  if (value === null || value === undefined || value === '') return '—'
  return dateTime(typeof value === 'number' ? new Date(value).toISOString() : value)
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

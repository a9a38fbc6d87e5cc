// The small account forms' checks, apart from their looks: a new API token's settings
// and an admin's balance change. Each gives the body to send or the i18n key of what is
// wrong, by field.
import type { BalanceChange, NewToken } from '../api/types'

/** A whole number, or null when `source` is not one. */
export function wholeNumber(source: string): number | null {
  const trimmed = source.trim()
  if (!/^-?\d+$/.test(trimmed)) return null
  const n = Number(trimmed)
  return Number.isSafeInteger(n) ? n : null
}

export interface TokenDraft {
  name: string
  /** None ticked: every model. */
  models: string[]
  spendCap: string
  rate: string
  webhook: string
  /** `yyyy-mm-dd` from a date input: the token works to the end of that day, local time. */
  expires: string
}

export const emptyTokenDraft = (): TokenDraft => ({ name: '', models: [], spendCap: '', rate: '', webhook: '', expires: '' })

export function tokenBody(
  draft: TokenDraft,
  now: Date = new Date(),
): { body: NewToken; errors?: undefined } | { errors: Record<string, string>; body?: undefined } {
  const errors: Record<string, string> = {}
  const body: NewToken = { name: draft.name.trim() }
  if (!body.name) errors.name = 'form.required'
  if (draft.models.length) body.models = [...draft.models]
  if (draft.spendCap.trim()) {
    const cap = wholeNumber(draft.spendCap)
    if (cap === null || cap < 0) errors.spendCap = 'form.wholeNonNegative'
    else body.spend_cap = cap
  }
  if (draft.rate.trim()) {
    const rate = wholeNumber(draft.rate)
    if (rate === null || rate < 1) errors.rate = 'form.wholePositive'
    else body.rate_per_minute = rate
  }
  if (draft.webhook.trim()) {
    let ok = false
    try {
      const url = new URL(draft.webhook.trim())
      ok = url.protocol === 'https:' || url.protocol === 'http:'
    } catch {
      ok = false
    }
    if (ok) body.webhook_url = draft.webhook.trim()
    else errors.webhook = 'form.url'
  }
  if (draft.expires) {
    const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(draft.expires)
    const end = match ? new Date(Number(match[1]), Number(match[2]) - 1, Number(match[3]), 23, 59, 59) : null
    if (!end || Number.isNaN(end.getTime())) errors.expires = 'form.date'
    else if (end.getTime() <= now.getTime()) errors.expires = 'tokens.pastExpiry'
    else body.expires_at = end.toISOString()
  }
  return Object.keys(errors).length ? { errors } : { body }
}

export type BalanceMode = 'delta' | 'set'

/** Exactly one of `delta` and `set`, as the API wants; a note when one was written. */
export function balanceChange(
  mode: BalanceMode,
  amount: string,
  note: string,
): { change: BalanceChange; error?: undefined } | { error: string; change?: undefined } {
  const n = wholeNumber(amount)
  if (n === null) return { error: 'balance.invalid' }
  const extra = note.trim() ? { note: note.trim() } : {}
  if (mode === 'delta') {
    if (n === 0) return { error: 'balance.zero' }
    return { change: { delta: n, ...extra } }
  }
  if (n < 0) return { error: 'balance.negative' }
  return { change: { set: n, ...extra } }
}

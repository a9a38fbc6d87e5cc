// Turns an error (from the server, from the page's own checks, or a failed task) into
// plain words in the reader's language. English shows the server's own message when
// there is one, since the page's English templates are the server's sentences; Chinese
// uses the translation of the stable code, filled with the values the page knows. A
// refusal for want of credits says the balance and the price in both languages, from
// the error's `details`.
import { ApiError } from '../api/client'
import type { ErrorInfo } from '../api/types'
import { has, locale, t } from '../i18n'
import { DEFAULT_LIMITS, formatList, type Problem, type UploadLimits } from './validate'
import { humanSize, integer } from '../i18n'

export interface Described {
  text: string
  /** Seconds to wait before a retry, for 503 answers (queue full). */
  retryAfter: number | null
  code: string
}

/** A page-side check's refusal. */
export function describeProblem(problem: Problem): Described {
  return { text: t(`errors.${problem.code}`, problem.params), retryAfter: null, code: problem.code }
}

/** An API error, a task's `error`, or anything thrown. */
export function describeError(error: unknown, limits: UploadLimits = DEFAULT_LIMITS): Described {
  let info: ErrorInfo
  let retryAfter: number | null = null
  let details: Record<string, unknown> | null = null
  if (error instanceof ApiError) {
    info = { code: error.code, message: error.message }
    retryAfter = error.retryAfter
    details = error.details
  } else if (error && typeof error === 'object' && 'code' in error && typeof (error as ErrorInfo).code === 'string') {
    info = error as ErrorInfo
  } else {
    info = { code: 'unknown', message: String(error) }
  }
  const key = `errors.${info.code}`
  let text: string
  if (info.code === 'insufficient_quota' && typeof details?.balance === 'number' && typeof details?.price === 'number') {
    text = t('errors.insufficient_quota_details', { balance: integer(details.balance), price: integer(details.price) })
  } else if (locale.value === 'en' && info.message && !['network_error', 'http_error', 'unknown'].includes(info.code)) {
    text = info.message
  } else if (info.code === 'image_too_many_pixels') {
    text = t('errors.image_too_many_pixels_short')
  } else if (has(key)) {
    text = t(key, { limit: humanSize(limits.max_bytes), formats: formatList(limits.formats) })
  } else {
    text = info.message || t('errors.unknown', { code: info.code })
  }
  if (retryAfter !== null) text = `${text} ${t('task.retryIn', { seconds: retryAfter })}`
  return { text, retryAfter, code: info.code }
}

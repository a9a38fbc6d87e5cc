// When the task page asks again for a task's webhook deliveries. A delivery is recorded
// just after the task ends and its first attempt follows within moments; a failed attempt
// is retried after a pause that grows from 5 s to 4 h (docs/webhooks.md). The page looks
// again shortly after the end, then when the next attempt is due (a little after, so its
// outcome is recorded), never sooner than 2 s nor later than a minute apart, and stops
// once nothing is pending.
import type { Delivery } from '../api/types'

export const SOON_MS = 2_000
export const LATEST_MS = 60_000
/** After a task is seen to end: its delivery may not be recorded yet. */
export const AFTER_END_MS = [1_500, 5_000]

/** Milliseconds until the next look, or null when no delivery is pending. */
export function nextLook(items: Delivery[], now: number = Date.now()): number | null {
  const pending = items.filter((d) => d.status === 'pending')
  if (!pending.length) return null
  const due = pending.map((d) => (d.next_attempt_at ? Date.parse(d.next_attempt_at) - now + 1_000 : SOON_MS))
  return Math.min(LATEST_MS, Math.max(SOON_MS, Math.min(...due)))
}

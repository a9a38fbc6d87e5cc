// The dashboard's numbers made into chart series, apart from drawing: hours on one
// axis, one series per model or per outcome, a scale with round steps, and the sentences
// that say what each chart shows for people who cannot see it.
import type { Dashboard } from '../api/types'

/** Colours for series: distinct, and each at least 3:1 against white. */
export const PALETTE = ['#1f4f8a', '#a53d19', '#1d6b3a', '#7b3fa0', '#8a6100', '#0f6e78', '#b0306a', '#4d5560']
/** Outcomes keep their meaning's colour (and their name in the legend and the table). */
export const OUTCOME_COLOURS: Record<string, string> = {
  succeeded: '#1d6b3a',
  failed: '#a4161a',
  canceled: '#6b7079',
  pending: '#1f4f8a',
}
export const OUTCOMES = ['succeeded', 'failed', 'canceled', 'pending'] as const

export interface Series {
  key: string
  values: number[]
  colour: string
}

/** The smallest round number (1, 2 or 5 × 10ⁿ steps) at or above `max`, and its steps. */
export function scale(max: number, steps = 4): { top: number; ticks: number[] } {
  if (!(max > 0)) return { top: steps, ticks: Array.from({ length: steps + 1 }, (_, i) => i) }
  const raw = max / steps
  const power = 10 ** Math.floor(Math.log10(raw))
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power
  const whole = step < 1 && Number.isInteger(max) ? 1 : step
  const top = Math.ceil(max / whole) * whole
  const count = Math.round(top / whole)
  return { top, ticks: Array.from({ length: count + 1 }, (_, i) => Number((i * whole).toPrecision(12))) }
}

const HOUR = 3_600_000

/**
 * The hours a chart has a bar for: the start of every UTC hour from the one holding
 * `since` to the one holding `now`, oldest first (the server buckets by UTC hour and
 * sends no rows for an hour without tasks).
 */
export function hourStarts(since: string, now: number = Date.now()): string[] {
  const first = Math.floor(Date.parse(since) / HOUR) * HOUR
  const last = Math.floor(now / HOUR) * HOUR
  if (!Number.isFinite(first) || first > last) return []
  return Array.from({ length: (last - first) / HOUR + 1 }, (_, i) => new Date(first + i * HOUR).toISOString())
}

/** The dashboard's rows with the hours they are drawn on. */
export type Hourly = Pick<Dashboard, 'tasks' | 'credits'> & { hours: string[] }

/** Tasks per hour, one series per model or per outcome (a task not ended yet is `pending`). */
export function taskSeries(data: Hourly, by: 'model' | 'outcome'): Series[] {
  const index = new Map(data.hours.map((h, i) => [Date.parse(h), i]))
  const byKey = new Map<string, number[]>()
  for (const row of data.tasks) {
    const key = by === 'model' ? row.model : row.outcome || 'pending'
    const i = index.get(Date.parse(row.hour))
    if (i === undefined) continue
    if (!byKey.has(key)) byKey.set(key, new Array<number>(data.hours.length).fill(0))
    byKey.get(key)![i]! += row.count
  }
  const keys =
    by === 'outcome'
      ? [...OUTCOMES.filter((o) => byKey.has(o)), ...[...byKey.keys()].filter((k) => !(OUTCOMES as readonly string[]).includes(k))]
      : [...byKey.keys()].sort((a, b) => sum(byKey.get(b)!) - sum(byKey.get(a)!) || a.localeCompare(b))
  return keys.map((key, i) => ({
    key,
    values: byKey.get(key)!,
    colour: by === 'outcome' ? (OUTCOME_COLOURS[key] ?? PALETTE[i % PALETTE.length]!) : PALETTE[i % PALETTE.length]!,
  }))
}

export function creditSeries(data: Hourly): Series[] {
  const values = new Array<number>(data.hours.length).fill(0)
  const index = new Map(data.hours.map((h, i) => [Date.parse(h), i]))
  for (const row of data.credits) {
    const i = index.get(Date.parse(row.hour))
    if (i !== undefined) values[i]! += row.credits
  }
  return [{ key: 'credits', values, colour: PALETTE[1]! }]
}

export const sum = (values: number[]) => values.reduce((a, b) => a + b, 0)

/** Column totals of stacked series. */
export function stackTotals(series: Series[], length: number): number[] {
  return Array.from({ length }, (_, i) => sum(series.map((s) => s.values[i] ?? 0)))
}

/** The index of the largest value (the first of equals), or -1 when all are zero. */
export function peak(values: number[]): number {
  let best = -1
  values.forEach((v, i) => {
    if (v > 0 && (best < 0 || v > values[best]!)) best = i
  })
  return best
}

// The dashboard's charts: series from the API's rows, a round scale, bars drawn as SVG,
// and a sentence and a table for each chart, for readers who cannot see it.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { Dashboard } from '../src/api/types'
import { locale } from '../src/i18n'
import { hourStarts, scale, taskSeries } from '../src/lib/charts'

const admin = vi.hoisted(() => ({ dashboard: vi.fn() }))
vi.mock('../src/api/admin', async (original) => ({ ...(await original<object>()), admin }))

const H = (h: number) => `2026-11-25T${String(h).padStart(2, '0')}:00:00Z`
// As the server sends it: `since` is `hours` before the call (not on the hour), rows by
// UTC hour start; the page fills in the hours (10, 11, 12) itself.
const NOW = Date.parse('2026-11-25T12:40:00Z')
const DATA: Dashboard = {
  since: '2026-11-25T10:17:03.5Z',
  tasks: [
    { hour: H(10), model: 'painter', outcome: 'succeeded', count: 4 },
    { hour: H(10), model: 'relief', outcome: 'failed', count: 1 },
    { hour: H(11), model: 'painter', outcome: 'succeeded', count: 6 },
    { hour: '2026-11-25T12:00:00.000Z', model: 'relief', outcome: 'pending', count: 2 },
  ],
  credits: [
    { hour: H(10), credits: 40 },
    { hour: H(11), credits: 60 },
  ],
  queue: [
    { channel: 'relief', queued: 3, running: 1 },
    { channel: 'ms', queued: 0, running: 2 },
  ],
  run_time: [
    { channel: 'relief', tasks: 5, p50_ms: 900, p95_ms: 2500 },
    { channel: 'ms', tasks: 6, p50_ms: 12000, p95_ms: 30000 },
  ],
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['Date'], now: NOW })
  locale.value = 'en'
  admin.dashboard.mockResolvedValue(DATA)
})
afterEach(() => {
  vi.useRealTimers()
  vi.clearAllMocks()
  document.body.innerHTML = ''
})

const HOURLY = { hours: [H(10), H(11), H(12)], tasks: DATA.tasks, credits: DATA.credits }

describe('chart series', () => {
  it('have a bar for every UTC hour from the one holding `since` to now', () => {
    expect(hourStarts(DATA.since, NOW)).toEqual(['2026-11-25T10:00:00.000Z', '2026-11-25T11:00:00.000Z', '2026-11-25T12:00:00.000Z'])
    expect(hourStarts('2026-11-25T12:00:00Z', NOW)).toEqual(['2026-11-25T12:00:00.000Z'])
    expect(hourStarts('not a time', NOW)).toEqual([])
  })
  it('stack tasks by model, or by outcome with a task not ended yet as pending', () => {
    expect(taskSeries(HOURLY, 'model').map((s) => [s.key, s.values])).toEqual([
      ['painter', [4, 6, 0]],
      ['relief', [1, 0, 2]],
    ])
    expect(taskSeries(HOURLY, 'outcome').map((s) => [s.key, s.values, s.colour])).toEqual([
      ['succeeded', [4, 6, 0], '#1d6b3a'],
      ['failed', [1, 0, 0], '#a4161a'],
      ['pending', [0, 0, 2], '#1f4f8a'],
    ])
  })
  it('use a scale of round steps', () => {
    expect(scale(22)).toEqual({ top: 30, ticks: [0, 10, 20, 30] })
    expect(scale(3)).toEqual({ top: 3, ticks: [0, 1, 2, 3] })
    expect(scale(100)).toEqual({ top: 100, ticks: [0, 25, 50, 75, 100] })
    expect(scale(0).top).toBeGreaterThan(0)
  })
})

describe('the dashboard', () => {
  it('draws each chart and says what it shows', async () => {
    const DashboardView = (await import('../src/views/console/DashboardView.vue')).default
    const wrapper = mount(DashboardView, { attachTo: document.body })
    await flushPromises()
    expect(admin.dashboard).toHaveBeenCalledWith(24)
    const tasks = wrapper.get('[data-testid="chart-tasks"]')
    // Four segments: painter at 10 and 11, relief at 10 and 12; the picture is not read twice.
    expect(tasks.findAll('[data-testid="bar"]')).toHaveLength(4)
    expect(tasks.get('svg').attributes('aria-hidden')).toBe('true')
    const summary = tasks.get('[data-testid="chart-summary"]').text()
    expect(summary).toMatch(/^13 tasks in the last 24 hours \(painter 10, relief 3\); the busiest hour, .+, had 6\.$/)

    // The numbers as a table, on request.
    const toggle = tasks.get('[data-testid="chart-table-toggle"]')
    expect(toggle.attributes('aria-expanded')).toBe('false')
    await toggle.trigger('click')
    expect(toggle.attributes('aria-expanded')).toBe('true')
    const rows = tasks.findAll('tbody tr').map((r) => r.findAll('th, td').map((c) => c.text()).slice(1))
    expect(rows).toEqual([
      ['4', '1', '5'],
      ['6', '0', '6'],
      ['0', '2', '2'],
    ])

    // By outcome.
    await wrapper.get('[data-testid="stack-outcome"]').setValue(true)
    expect(tasks.get('[data-testid="chart-summary"]').text()).toContain('(Succeeded 10, Failed 1, Not ended 2)')

    expect(wrapper.get('[data-testid="chart-credits"] [data-testid="chart-summary"]').text()).toMatch(
      /^100 credits spent in the last 24 hours; the most in one hour, 60, at .+\.$/,
    )
    expect(wrapper.get('[data-testid="chart-queue"] [data-testid="chart-summary"]').text()).toBe(
      '3 tasks waiting and 3 running on 2 channels; the busiest is relief with 4.',
    )
    expect(wrapper.get('[data-testid="chart-runtime"] [data-testid="chart-summary"]').text()).toBe(
      'Over 2 channels, the slowest is ms: 95% of its tasks ran within 30 s.',
    )
    expect(wrapper.findAll('[data-testid="chart-runtime"] [data-testid="bar"]')).toHaveLength(2)
  })
})

// The console's lists as the server pages them: users by `offset`/`limit` with `total`
// (every user is loaded, a page of 200 at a time, and the name filter works on them), and
// the audit log by `offset` with `total`, filtered by a user's id.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { admin } from '../src/api/admin'
import type { AuditEntry, User } from '../src/api/types'
import { locale } from '../src/i18n'

type Call = { url: string; init: RequestInit }
const calls: Call[] = []

function serve(handler: (url: URL, init: RequestInit) => unknown) {
  vi.stubGlobal(
    'fetch',
    vi.fn(async (url: string, init: RequestInit = {}) => {
      calls.push({ url, init })
      const body = handler(new URL(url, 'http://kiln.test'), init)
      return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } })
    }),
  )
}

const user = (i: number): User => ({
  id: `u${i}`,
  username: i === 0 ? 'admin' : `user${i}`,
  role: i === 0 ? 'admin' : 'user',
  balance: i * 10,
  max_active: null,
  disabled: false,
  created_at: '2026-11-25T10:00:00Z',
  updated_at: '2026-11-25T10:00:00Z',
})
const USERS = Array.from({ length: 450 }, (_, i) => user(i))

/** The server's answer to `GET /api/v1/admin/users?offset&limit` (limit clamped to 200). */
function usersPage(url: URL) {
  const offset = Number(url.searchParams.get('offset') ?? 0)
  const limit = Math.min(200, Number(url.searchParams.get('limit') ?? 50))
  return { items: USERS.slice(offset, offset + limit), total: USERS.length }
}

const entry = (id: number): AuditEntry => ({
  id,
  at: '2026-11-25T10:00:00Z',
  actor_id: 'u0',
  actor: 'admin',
  action: 'balance.add',
  target: 'u3',
  detail: { delta: 5 },
  ip: '127.0.0.1',
})

beforeEach(() => {
  locale.value = 'en'
  calls.length = 0
})
afterEach(() => {
  vi.unstubAllGlobals()
  document.body.innerHTML = ''
})

describe('every user', () => {
  it('is read a page at a time until the total is reached', async () => {
    serve(usersPage)
    const all = await admin.allUsers()
    expect(all).toHaveLength(450)
    expect(calls.map((c) => c.url)).toEqual([
      '/api/v1/admin/users?offset=0&limit=200',
      '/api/v1/admin/users?offset=200&limit=200',
      '/api/v1/admin/users?offset=400&limit=200',
    ])
  })

  it('is listed, and the name filter narrows the list without asking the server again', async () => {
    serve(usersPage)
    const UsersView = (await import('../src/views/console/UsersView.vue')).default
    const wrapper = mount(UsersView, { attachTo: document.body })
    await flushPromises()
    expect(wrapper.findAll('[data-testid="user-row"]')).toHaveLength(450)
    expect(wrapper.get('[data-testid="users-count"]').text()).toBe('450 users')
    const asked = calls.length
    await wrapper.get('[data-testid="user-search"]').setValue('user44')
    // user44 and user440–449.
    expect(wrapper.findAll('[data-testid="user-row"]').map((r) => r.attributes('data-user'))).toEqual([
      'user44',
      ...Array.from({ length: 10 }, (_, i) => `user44${i}`),
    ])
    expect(wrapper.get('[data-testid="users-count"]').text()).toBe('11 of 450 users')
    expect(calls.length).toBe(asked)
  })
})

describe('the audit log', () => {
  it('filters by the chosen user’s id, names targets that are users, and pages by offset', async () => {
    const entries = Array.from({ length: 70 }, (_, i) => entry(70 - i))
    serve((url) => {
      if (url.pathname === '/api/v1/admin/users') return usersPage(url)
      const offset = Number(url.searchParams.get('offset'))
      const limit = Number(url.searchParams.get('limit'))
      const actor = url.searchParams.get('actor')
      const selected = actor && actor !== 'u0' ? [] : entries
      return { items: selected.slice(offset, offset + limit), total: selected.length }
    })
    const AuditView = (await import('../src/views/console/AuditView.vue')).default
    const wrapper = mount(AuditView, { attachTo: document.body })
    await flushPromises()
    expect(calls[0]!.url).toBe('/api/v1/admin/audit?offset=0&limit=50')
    expect(wrapper.findAll('[data-testid="audit-row"]')).toHaveLength(50)
    expect(wrapper.get('[data-testid="audit-count"]').text()).toBe('50 of 70 entries')
    // The target `u3` is user3.
    expect(wrapper.get('[data-testid="audit-row"]').findAll('td')[3]!.text()).toBe('user3')

    await wrapper.get('.actions.center button').trigger('click')
    await flushPromises()
    expect(calls.at(-1)!.url).toBe('/api/v1/admin/audit?offset=50&limit=50')
    expect(wrapper.findAll('[data-testid="audit-row"]')).toHaveLength(70)
    expect(wrapper.find('.actions.center button').exists()).toBe(false)

    // Who: a user, sent as their id.
    const options = wrapper.get('[data-testid="audit-actor"]').findAll('option')
    expect(options).toHaveLength(451)
    await wrapper.get('[data-testid="audit-actor"]').setValue('u7')
    await wrapper.get('[data-testid="audit-action"]').setValue(' user.create ')
    await wrapper.get('[data-testid="audit-filters"]').trigger('submit')
    await flushPromises()
    expect(calls.at(-1)!.url).toBe('/api/v1/admin/audit?actor=u7&action=user.create&offset=0&limit=50')
    expect(wrapper.findAll('[data-testid="audit-row"]')).toHaveLength(0)
    expect(wrapper.text()).toContain('Nothing logged for these filters.')
  })
})

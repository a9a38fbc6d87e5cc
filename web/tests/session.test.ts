// The API client signed in: the session cookie goes with every call, the CSRF token with
// every call that is not a GET, a refused CSRF token is asked for again once, and a 401
// on a page that needs an account sends the person to sign in and back.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError, currentCsrfToken, errorFrom, request, setCsrfToken, setUnauthorizedHandler } from '../src/api/client'
import { api } from '../src/api/client'
import { account, admin, usageCsvUrl } from '../src/api/admin'
import { gate, loadSession, safeNext, session } from '../src/lib/session'

type Call = { url: string; init: RequestInit }
const calls: Call[] = []

function answer(status: number, body: unknown, headers: Record<string, string> = {}) {
  return new Response(status === 204 ? null : JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers },
  })
}

function serve(handler: (url: string, init: RequestInit) => Response) {
  vi.stubGlobal(
    'fetch',
    vi.fn(async (url: string, init: RequestInit = {}) => {
      calls.push({ url, init })
      return handler(url, init)
    }),
  )
}

const header = (call: Call, name: string) => (call.init.headers as Record<string, string>)[name]

beforeEach(() => {
  calls.length = 0
  setCsrfToken(null)
})
afterEach(() => {
  vi.unstubAllGlobals()
  setUnauthorizedHandler(null)
  setCsrfToken(null)
})

describe('the client, signed in', () => {
  it('sends the cookie always and the CSRF token with every request that is not a GET', async () => {
    serve((url) => (url.endsWith('/tokens') ? answer(200, { items: [] }) : answer(204, null)))
    setCsrfToken('csrf-1')
    await account.tokens()
    await account.revokeToken('t1')
    await admin.updateUser('u1', { disabled: true })
    expect(calls.map((c) => [c.init.method ?? 'GET', c.url])).toEqual([
      ['GET', '/api/v1/me/tokens'],
      ['DELETE', '/api/v1/me/tokens/t1'],
      ['PATCH', '/api/v1/admin/users/u1'],
    ])
    for (const call of calls) expect(call.init.credentials).toBe('same-origin')
    expect(header(calls[0]!, 'X-CSRF-Token')).toBeUndefined()
    expect(header(calls[1]!, 'X-CSRF-Token')).toBe('csrf-1')
    expect(header(calls[2]!, 'X-CSRF-Token')).toBe('csrf-1')
    expect(JSON.parse(calls[2]!.init.body as string)).toEqual({ disabled: true })
  })

  it('sends no CSRF header when signed out', async () => {
    serve(() => answer(201, { id: 't' }))
    await api.createFromPrompt('a fox', 'painter')
    expect(header(calls[0]!, 'X-CSRF-Token')).toBeUndefined()
  })

  it('asks for the CSRF token again after csrf_failed, and retries once with it', async () => {
    // The page holds a token the server no longer takes (the session was renewed elsewhere).
    setCsrfToken('stale')
    const token = 'fresh'
    serve((url, init) => {
      if (url === '/api/v1/me') {
        return answer(200, { auth_mode: 'open', user: { id: 'u', username: 'ann', role: 'user' }, csrf_token: 'fresh' })
      }
      const sent = (init.headers as Record<string, string>)['X-CSRF-Token']
      return sent === token ? answer(204, null) : answer(403, { error: { code: 'csrf_failed', message: 'no' } })
    })
    // lib/session (imported above) installs the refresher.
    await account.revokeToken('t1')
    expect(calls.map((c) => c.url)).toEqual(['/api/v1/me/tokens/t1', '/api/v1/me', '/api/v1/me/tokens/t1'])
    expect(header(calls[2]!, 'X-CSRF-Token')).toBe('fresh')
    expect(currentCsrfToken()).toBe('fresh')
  })

  it('reports a 401 unauthorized to the handler, but not a wrong password', async () => {
    const seen: string[] = []
    setUnauthorizedHandler((e) => seen.push(e.code))
    serve((url) =>
      url === '/api/v1/session'
        ? answer(401, { error: { code: 'invalid_credentials', message: 'Wrong username or password.' } })
        : answer(401, { error: { code: 'unauthorized', message: 'Sign in.' } }),
    )
    await expect(account.signIn('ann', 'nope')).rejects.toMatchObject({ code: 'invalid_credentials', status: 401 })
    expect(seen).toEqual([])
    await expect(admin.users()).rejects.toMatchObject({ code: 'unauthorized' })
    expect(seen).toEqual(['unauthorized'])
  })

  it('reads the error details and answers 204 with nothing', async () => {
    const error = errorFrom(402, JSON.stringify({ error: { code: 'insufficient_quota', message: 'm', details: { balance: 3, price: 10 } } }), null)
    expect(error).toBeInstanceOf(ApiError)
    expect(error.details).toEqual({ balance: 3, price: 10 })
    serve(() => answer(204, null))
    await expect(request('/api/v1/session', { method: 'DELETE' })).resolves.toBeUndefined()
  })

  it('builds the CSV link from the filters', () => {
    expect(usageCsvUrl({ model: 'painter', outcome: '', from: '2026-01-01T00:00:00.000Z' })).toBe(
      '/api/v1/usage?model=painter&from=2026-01-01T00%3A00%3A00.000Z&format=csv',
    )
  })
})

describe('who may open a page', () => {
  const anonymous = { loaded: true, authMode: 'open' as const, user: null }
  const user = { ...anonymous, user: { id: 'u', username: 'ann', role: 'user' as const, balance: 0, max_active: null, disabled: false, created_at: '', updated_at: '' } }

  it('sends an anonymous visitor of the account and console pages to sign in, and back after', () => {
    expect(gate('user', '/account', anonymous)).toEqual({ name: 'signin', query: { next: '/account' } })
    expect(gate('admin', '/console/users?q=a', anonymous)).toEqual({ name: 'signin', query: { next: '/console/users?q=a' } })
    expect(gate('user', '/account', user)).toBeNull()
    // The console itself tells a non-admin it is for admins.
    expect(gate('admin', '/console', user)).toBeNull()
  })

  it('lets anyone create in open mode, and only the signed-in in tokens mode', () => {
    expect(gate('tokens', '/', anonymous)).toBeNull()
    expect(gate('tokens', '/', { ...anonymous, authMode: 'tokens' })).toEqual({ name: 'signin', query: { next: '/' } })
    expect(gate('tokens', '/', { ...user, authMode: 'tokens' })).toBeNull()
  })

  it('goes back only to a path on this site', () => {
    expect(safeNext('/console/channels')).toBe('/console/channels')
    expect(safeNext('//evil.example/x')).toBe('/')
    expect(safeNext('https://evil.example/')).toBe('/')
    expect(safeNext('/\\evil.example')).toBe('/')
    expect(safeNext(undefined)).toBe('/')
    expect(safeNext('/signin?next=/x')).toBe('/')
  })
})

describe('a 401 on a console page', () => {
  it('sends the person to sign in, with the page to come back to', async () => {
    serve((url) => {
      if (url === '/api/v1/me') {
        return answer(200, {
          auth_mode: 'open',
          user: { id: 'a', username: 'root', role: 'admin', balance: 0, max_active: null, disabled: false, created_at: '', updated_at: '' },
          csrf_token: 'c',
        })
      }
      return answer(401, { error: { code: 'unauthorized', message: 'Sign in.' } })
    })
    const { router } = await import('../src/router')
    await loadSession(true)
    await router.push('/console/users')
    expect(router.currentRoute.value.fullPath).toBe('/console/users')
    expect(session.user?.username).toBe('root')
    // The session expires: the next call answers 401.
    await expect(admin.users()).rejects.toMatchObject({ code: 'unauthorized' })
    await vi.waitFor(() => expect(router.currentRoute.value.name).toBe('signin'))
    expect(router.currentRoute.value.query.next).toBe('/console/users')
    expect(session.user).toBeNull()
    expect(currentCsrfToken()).toBeNull()
  })
})

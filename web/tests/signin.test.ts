// The sign-in page against a scripted server: the limiter's wait counted down with the
// button off, a wrong password in plain words, and back to the page that asked.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createMemoryHistory, createRouter } from 'vue-router'
import { currentCsrfToken, setCsrfToken } from '../src/api/client'
import { locale } from '../src/i18n'
import { session } from '../src/lib/session'

const ADMIN = { id: 'a', username: 'root', role: 'admin', balance: 0, max_active: null, disabled: false, created_at: '', updated_at: '' }
let script: (() => Response)[] = []
const sent: unknown[] = []

function envelope(status: number, code: string, message: string, headers: Record<string, string> = {}) {
  return new Response(JSON.stringify({ error: { code, message }, request_id: 'r' }), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers },
  })
}

async function mountAt(path: string) {
  const SignInView = (await import('../src/views/SignInView.vue')).default
  const router = createRouter({
    history: createMemoryHistory(),
    routes: [
      { path: '/signin', name: 'signin', component: SignInView },
      { path: '/console/:rest(.*)*', component: { template: '<h1>console</h1>' } },
      { path: '/', component: { template: '<h1>home</h1>' } },
    ],
  })
  await router.push(path)
  const wrapper = mount({ template: '<RouterView />' }, { global: { plugins: [router] }, attachTo: document.body })
  await flushPromises()
  return { wrapper, router }
}

async function signInWith(wrapper: Awaited<ReturnType<typeof mountAt>>['wrapper'], username: string, password: string) {
  await wrapper.get('[data-testid="signin-username"]').setValue(username)
  await wrapper.get('[data-testid="signin-password"]').setValue(password)
  await wrapper.get('[data-testid="signin-form"]').trigger('submit')
  await flushPromises()
}

beforeEach(() => {
  locale.value = 'en'
  session.user = null
  session.authMode = 'open'
  setCsrfToken(null)
  script = []
  sent.length = 0
  vi.stubGlobal(
    'fetch',
    vi.fn(async (_url: string, init: RequestInit = {}) => {
      if (init.body) sent.push(JSON.parse(init.body as string))
      const next = script.shift()
      if (!next) throw new Error('unexpected request')
      return next()
    }),
  )
})
afterEach(() => {
  vi.useRealTimers()
  vi.unstubAllGlobals()
  document.body.innerHTML = ''
})

describe('the sign-in page', () => {
  it('counts the limiter’s wait down and keeps the button off until it is over', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] })
    const { wrapper } = await mountAt('/signin?next=/console')
    script.push(() => envelope(429, 'too_many_signin_attempts', 'Too many sign-in attempts; wait and retry.', { 'Retry-After': '3' }))
    await signInWith(wrapper, 'root', 'guess')
    const wait = wrapper.get('[data-testid="signin-wait"]')
    expect(wait.text()).toBe('Too many sign-in attempts. Try again in 3 s.')
    const live = wrapper.get('[aria-live="polite"]')
    expect(live.text()).toBe('Too many sign-in attempts. Try again in 3 s.')
    expect(wrapper.get('[data-testid="signin-submit"]').attributes('disabled')).toBeDefined()
    // The password field is cleared after a refusal.
    expect((wrapper.get('[data-testid="signin-password"]').element as HTMLInputElement).value).toBe('')

    vi.advanceTimersByTime(1000)
    await flushPromises()
    expect(wrapper.get('[data-testid="signin-wait"]').text()).toBe('Too many sign-in attempts. Try again in 2 s.')
    // The live region is not repeated each second.
    expect(live.text()).toBe('Too many sign-in attempts. Try again in 3 s.')
    vi.advanceTimersByTime(2000)
    await flushPromises()
    expect(wrapper.find('[data-testid="signin-wait"]').exists()).toBe(false)
    expect(live.text()).toBe('You can try to sign in again now.')
    await wrapper.get('[data-testid="signin-password"]').setValue('right')
    expect(wrapper.get('[data-testid="signin-submit"]').attributes('disabled')).toBeUndefined()
  })

  it('says the same in Chinese', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] })
    locale.value = 'zh-CN'
    const { wrapper } = await mountAt('/signin')
    script.push(() => envelope(429, 'too_many_signin_attempts', 'Too many sign-in attempts; wait and retry.', { 'Retry-After': '42' }))
    await signInWith(wrapper, 'root', 'guess')
    expect(wrapper.get('[data-testid="signin-wait"]').text()).toBe('登录尝试次数过多，请在 42 秒后重试。')
  })

  it('says a wrong password in plain words, and stays', async () => {
    const { wrapper, router } = await mountAt('/signin?next=/console')
    expect(wrapper.get('[data-testid="signin-reason"]').text()).toBe('Sign in to continue.')
    script.push(() => envelope(401, 'invalid_credentials', 'Wrong username or password.'))
    await signInWith(wrapper, 'root', 'guess')
    expect(wrapper.get('[data-testid="signin-error"]').text()).toBe('Wrong username or password.')
    expect(router.currentRoute.value.path).toBe('/signin')
    locale.value = 'zh-CN'
    script.push(() => envelope(401, 'invalid_credentials', 'Wrong username or password.'))
    await signInWith(wrapper, 'root', 'guess')
    expect(wrapper.get('[data-testid="signin-error"]').text()).toBe('用户名或密码错误。')
  })

  it('signs in, keeps the CSRF token and goes back to the page that asked', async () => {
    const { wrapper, router } = await mountAt('/signin?next=/console/channels')
    script.push(
      () =>
        new Response(JSON.stringify({ user: ADMIN, csrf_token: 'tok-1', expires_at: '2030-01-01T00:00:00Z' }), {
          status: 200,
          headers: { 'Content-Type': 'application/json' },
        }),
    )
    await signInWith(wrapper, ' root ', 'correct horse')
    expect(sent).toEqual([{ username: 'root', password: 'correct horse' }])
    expect(currentCsrfToken()).toBe('tok-1')
    expect(session.user?.username).toBe('root')
    expect(router.currentRoute.value.fullPath).toBe('/console/channels')
  })

  it('never goes back to another site', async () => {
    const { wrapper, router } = await mountAt('/signin?next=//evil.example/')
    script.push(
      () => new Response(JSON.stringify({ user: ADMIN, csrf_token: 't', expires_at: '' }), { status: 200, headers: { 'Content-Type': 'application/json' } }),
    )
    await signInWith(wrapper, 'root', 'pw')
    expect(router.currentRoute.value.fullPath).toBe('/')
  })
})

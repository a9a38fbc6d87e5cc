// Who is using the page: the server's auth mode and the signed-in user, from
// `GET /api/v1/me` (once per visit, again after sign-in, sign-out or a refused CSRF
// token). The session itself is an HttpOnly cookie the page never reads; what the page
// keeps is the CSRF token, handed to the API client for every request that changes
// something.
import { reactive } from 'vue'
import { account } from '../api/admin'
import { setCsrfRefresher, setCsrfToken } from '../api/client'
import type { AuthMode, User } from '../api/types'

export const session = reactive<{ loaded: boolean; authMode: AuthMode; user: User | null }>({
  loaded: false,
  authMode: 'open',
  user: null,
})

let loading: Promise<void> | null = null

/** Asks the server who this is; `force` asks again even when already known. */
export function loadSession(force = false): Promise<void> {
  if (loading && !force) return loading
  loading = account.me().then(
    (me) => {
      session.authMode = me.auth_mode
      session.user = me.user
      session.loaded = true
      setCsrfToken(me.csrf_token)
    },
    () => {
      // The server could not be asked: the page works as for an anonymous visitor, and
      // asks again on the next navigation.
      session.loaded = true
      loading = null
    },
  )
  return loading
}

setCsrfRefresher(() => loadSession(true))

export async function signIn(username: string, password: string): Promise<User> {
  const answer = await account.signIn(username, password)
  session.user = answer.user
  session.loaded = true
  setCsrfToken(answer.csrf_token)
  loading = Promise.resolve()
  return answer.user
}

export async function signOut(): Promise<void> {
  try {
    await account.signOut()
  } finally {
    forgetUser()
  }
}

/** The session ended (a 401, or sign-out): the page is anonymous again. */
export function forgetUser(): void {
  session.user = null
  setCsrfToken(null)
}

/**
 * Who may open a route: `user` needs anyone signed in, `admin` an admin, `tokens` anyone
 * signed in when the server runs with `auth.mode = "tokens"` (the create page, the task
 * page, library and history: the API answers them only with credentials then).
 */
export type Access = 'user' | 'admin' | 'tokens'

/**
 * Where a navigation goes: `null` to let it through, or the sign-in page with the path
 * to come back to. An admin page reached by a signed-in non-admin is let through: the
 * console says that this account may not use it.
 */
export function gate(access: Access | undefined, fullPath: string, state: typeof session = session) {
  if (!access || state.user) return null
  if (access === 'tokens' && state.authMode !== 'tokens') return null
  return { name: 'signin', query: { next: fullPath } }
}

/** A `next` to go back to after sign-in: only a path on this site, never `//host` or a URL. */
export function safeNext(next: unknown): string {
  if (typeof next !== 'string' || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return '/'
  if (next.startsWith('/signin')) return '/'
  return next
}

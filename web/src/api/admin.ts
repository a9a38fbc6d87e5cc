// Calls for accounts and the console: the signed-in person's own account (session,
// password, tokens, usage) and the admin routes. Every call goes through `request`, so
// the session cookie, the CSRF header and the sign-in redirect apply to all of them.
import { json, request } from './client'
import type {
  AuditPage,
  BalanceChange,
  ChannelConfig,
  ChannelTest,
  ChannelType,
  ChannelView,
  Dashboard,
  DeletedChannel,
  IssuedToken,
  Me,
  NewToken,
  Price,
  PriceList,
  Role,
  SignedIn,
  Token,
  UsageFilters,
  UsagePage,
  User,
  UserChanges,
  UserPage,
} from './types'

const id = (value: string) => encodeURIComponent(value)

/** `?a=1&b=2` without empty values ('' when nothing is left). */
export function query(params: Record<string, string | number | null | undefined>): string {
  const search = new URLSearchParams()
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(key, String(value))
  }
  const text = search.toString()
  return text ? `?${text}` : ''
}

/** The CSV export of the records the filters select, as a link (the cookie goes with it). */
export function usageCsvUrl(filters: UsageFilters): string {
  return `/api/v1/usage${query({ ...filters, format: 'csv' })}`
}

export const account = {
  me: () => request<Me>('/api/v1/me'),
  /** Its 401 is a wrong password, not an ended session. */
  signIn: (username: string, password: string) =>
    request<SignedIn>('/api/v1/session', json({ username, password }), { quiet401: true }),
  signOut: () => request<void>('/api/v1/session', { method: 'DELETE' }, { quiet401: true }),
  changePassword: (current_password: string, new_password: string) =>
    request<void>('/api/v1/me/password', json({ current_password, new_password }, 'PUT'), { quiet401: true }),
  tokens: () => request<{ items: Token[] }>('/api/v1/me/tokens'),
  createToken: (body: NewToken) => request<IssuedToken>('/api/v1/me/tokens', json(body)),
  revokeToken: (tokenId: string) => request<void>(`/api/v1/me/tokens/${id(tokenId)}`, { method: 'DELETE' }),
  usage: (filters: UsageFilters, cursor: string | null = null, limit = 50) =>
    request<UsagePage>(`/api/v1/usage${query({ ...filters, cursor, limit })}`),
}

export const admin = {
  /** A page of users (the server takes 1–200 a page). */
  users: (params: { offset?: number; limit?: number } = {}) => request<UserPage>(`/api/v1/admin/users${query(params)}`),
  /** Every user, a page at a time (for the console's lists and choices). */
  allUsers: async (): Promise<User[]> => {
    const users: User[] = []
    for (;;) {
      const page = await admin.users({ offset: users.length, limit: 200 })
      users.push(...page.items)
      if (!page.items.length || users.length >= page.total) return users
    }
  },
  createUser: (body: { username: string; password: string; role: Role }) =>
    request<User>('/api/v1/admin/users', json(body)),
  updateUser: (userId: string, changes: UserChanges) =>
    request<User>(`/api/v1/admin/users/${id(userId)}`, json(changes, 'PATCH')),
  setBalance: (userId: string, change: BalanceChange) =>
    request<{ balance: number }>(`/api/v1/admin/users/${id(userId)}/balance`, json(change)),
  userTokens: (userId: string) => request<{ items: Token[] }>(`/api/v1/admin/users/${id(userId)}/tokens`),
  createUserToken: (userId: string, body: NewToken) =>
    request<IssuedToken>(`/api/v1/admin/users/${id(userId)}/tokens`, json(body)),
  tokens: () => request<{ items: Token[] }>('/api/v1/admin/tokens'),
  revokeToken: (tokenId: string) => request<void>(`/api/v1/admin/tokens/${id(tokenId)}`, { method: 'DELETE' }),
  prices: () => request<PriceList>('/api/v1/admin/prices'),
  setPrice: (model: string, per_task: number, per_image: number) =>
    request<Price>(`/api/v1/admin/prices/${id(model)}`, json({ per_task, per_image }, 'PUT')),
  /** `actor` is a user id. */
  audit: (params: { actor?: string; action?: string; offset?: number; limit?: number }) =>
    request<AuditPage>(`/api/v1/admin/audit${query(params)}`),
  settings: () => request<Record<string, unknown>>('/api/v1/admin/settings'),
  dashboard: (hours: number) => request<Dashboard>(`/api/v1/admin/dashboard${query({ hours })}`),
  channelTypes: async () => (await request<{ items: ChannelType[] }>('/api/v1/admin/channel-types')).items,
  channels: () => request<{ items: ChannelView[] }>('/api/v1/admin/channels'),
  channel: (name: string) => request<ChannelView>(`/api/v1/admin/channels/${id(name)}`),
  createChannel: (config: ChannelConfig) => request<ChannelView>('/api/v1/admin/channels', json(config)),
  updateChannel: (name: string, config: ChannelConfig) =>
    request<ChannelView>(`/api/v1/admin/channels/${id(name)}`, json(config, 'PUT')),
  /** Switches a stored channel on or off, nothing else changed. */
  setChannelEnabled: (name: string, enabled: boolean) =>
    request<ChannelView>(`/api/v1/admin/channels/${id(name)}`, json({ enabled }, 'PATCH')),
  deleteChannel: (name: string) => request<DeletedChannel>(`/api/v1/admin/channels/${id(name)}`, { method: 'DELETE' }),
  /** A real, cheap call to a live channel's provider. */
  testChannel: (name: string) => request<ChannelTest>(`/api/v1/admin/channels/${id(name)}/test`, { method: 'POST' }),
  /** The same for a form not saved yet; `channel`: the stored channel it edits (its key is used when none is typed). */
  testDraft: (config: ChannelConfig, channel: string | null = null) =>
    request<ChannelTest>(`/api/v1/admin/channel-tests${query({ channel })}`, json(config)),
}

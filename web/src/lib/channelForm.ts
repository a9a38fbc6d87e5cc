// The channel form's data, apart from its looks: a draft made from a provider type (its
// fields, from `GET /api/v1/admin/channel-types`) and an existing channel, and the
// configuration sent back. Checked here, so the form can mark each field before anything
// is sent: whole numbers, http(s) URLs, JSON objects for defaults and overrides, at least
// one model.
//
// The key is write-only: the draft holds an empty input and the stored key's mask; an
// empty input sends no `secret`, which keeps the stored key. What the form does not show
// (the circuit breaker, a model's description, cloud settings in `options` the type does
// not list) is carried over from the channel as it was.
import type { ChannelConfig, ChannelField, ChannelType, ChannelView } from '../api/types'

export const MODEL_KINDS = ['image_to_3d', 'text_to_3d', 'text_to_image'] as const

/** Base URLs offered when the server names none for a type it knows. */
const KNOWN_BASE_URLS: Record<string, { label: string; url: string }[]> = {
  modelscope: [{ label: 'ModelScope', url: 'https://api-inference.modelscope.cn' }],
  tripo: [
    { label: 'Tripo (global)', url: 'https://openapi.tripo3d.ai' },
    { label: 'Tripo (China)', url: 'https://openapi.tripo3d.com' },
  ],
}

export interface ModelRow {
  name: string
  kind: string
  upstream: string
  /** Not shown; kept as it was. */
  description?: string | null
}

export interface ChannelDraft {
  name: string
  type: string
  enabled: boolean
  clientKeys: boolean
  priority: string
  weight: string
  maxConcurrency: string
  maxQueue: string
  /** `90s`, `10m`…; empty: the server's task deadline. */
  deadline: string
  models: ModelRow[]
  /** A new key; empty keeps the stored one. */
  secret: string
  /** The stored key as the server shows it (`••••1234`), or null. */
  maskedSecret: string | null
  /** The type's fields other than `secret`, as the inputs hold them. */
  options: Record<string, string | boolean>
  defaults: string
  overrides: string
  /** The channel as it was (null for a new one). */
  base: ChannelConfig | null
}

/** An i18n key under `channels.errors` and its values. */
export interface Problem {
  key: string
  params?: Record<string, string | number>
}

export type Problems = Record<string, Problem>

/** Whether the type's key goes in the top-level `secret` (rather than in `options`). */
export const isSecretField = (field: ChannelField) => field.name === 'secret'

/** The type's fields that are provider settings (`options`). */
export const optionFields = (type: ChannelType | undefined) => (type?.fields ?? []).filter((f) => !isSecretField(f))

/** Whether the form offers a key input for this type (or for a channel that has one). */
export function takesSecret(type: ChannelType | undefined, draft: ChannelDraft): boolean {
  return Boolean(type?.fields.some(isSecretField)) || draft.maskedSecret !== null
}

/** The base URLs to choose from, for a field named `base_url`. */
export function baseUrlChoices(type: ChannelType | undefined): { label: string; url: string }[] {
  if (!type) return []
  return type.base_urls?.length ? type.base_urls : (KNOWN_BASE_URLS[type.type] ?? [])
}

function text(value: unknown): string {
  if (value === undefined || value === null) return ''
  if (typeof value === 'string') return value
  if (typeof value === 'number' || typeof value === 'boolean') return String(value)
  return JSON.stringify(value, null, 2)
}

const pretty = (value: unknown) =>
  value && typeof value === 'object' && Object.keys(value).length ? JSON.stringify(value, null, 2) : '{}'

/** The inputs' values for a type's fields, from a channel's options or the fields' defaults. */
function optionInputs(type: ChannelType | undefined, options: Record<string, unknown> | null): Record<string, string | boolean> {
  const inputs: Record<string, string | boolean> = {}
  for (const field of optionFields(type)) {
    const stored = options?.[field.name]
    if (field.kind === 'bool') {
      inputs[field.name] = typeof stored === 'boolean' ? stored : field.default === true
    } else if (field.kind === 'secret') {
      // Write-only like the channel's key: the input starts empty.
      inputs[field.name] = ''
    } else if (options) {
      inputs[field.name] = text(stored)
    } else if (field.name === 'base_url' && typeof field.default === 'string') {
      // A new channel starts at the provider's own address (ModelScope's), shown as the
      // chosen one of the offered addresses.
      inputs[field.name] = field.default
    } else {
      // A new channel: empty inputs take the server's defaults, shown as placeholders.
      inputs[field.name] = ''
    }
  }
  return inputs
}

/** A draft for a new channel of `type`, or for editing `view`. */
export function draftFor(type: ChannelType | undefined, view?: ChannelView | null): ChannelDraft {
  const config = view?.config ?? null
  const secret = config?.secret
  return {
    name: config?.name ?? view?.name ?? '',
    type: config?.type ?? view?.type ?? type?.type ?? '',
    enabled: config?.enabled ?? view?.enabled ?? true,
    clientKeys: config?.client_keys ?? false,
    priority: text(config?.priority ?? 0),
    weight: text(config?.weight ?? 1),
    maxConcurrency: text(config?.max_concurrency ?? 1),
    maxQueue: text(config?.max_queue ?? 5),
    deadline: text(config?.deadline),
    models: (config?.models ?? [{ name: '', kind: MODEL_KINDS[0], upstream: '' }]).map((m) => ({
      name: m.name,
      kind: m.kind,
      upstream: m.upstream ?? '',
      description: m.description ?? null,
    })),
    secret: '',
    maskedSecret: typeof secret === 'string' && secret !== '' ? secret : null,
    options: optionInputs(type, config ? (config.options ?? {}) : null),
    defaults: pretty(config?.defaults),
    overrides: pretty(config?.overrides),
    base: config,
  }
}

/** A new channel changing type: the type's own fields, with their defaults. */
export function changeType(draft: ChannelDraft, type: ChannelType | undefined): void {
  draft.type = type?.type ?? ''
  draft.options = optionInputs(type, null)
}

/** Why `source` is not a JSON object, or null when it is (empty counts as `{}`). */
export function jsonObjectProblem(source: string): Problem | null {
  if (source.trim() === '') return null
  let value: unknown
  try {
    value = JSON.parse(source)
  } catch (err) {
    return { key: 'json', params: { reason: err instanceof Error ? err.message : String(err) } }
  }
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? null : { key: 'jsonObject' }
}

const WHOLE = /^-?\d+$/
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

function whole(source: string, min: number): number | Problem {
  const trimmed = source.trim()
  if (!WHOLE.test(trimmed)) return { key: 'int' }
  const n = Number(trimmed)
  if (!Number.isSafeInteger(n)) return { key: 'int' }
  if (n < min) return { key: 'min', params: { min } }
  return n
}

function isHttpUrl(source: string): boolean {
  try {
    const url = new URL(source)
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== ''
  } catch {
    return false
  }
}

/**
 * The configuration to send, or the problems by field: `name`, `priority`, `weight`,
 * `maxConcurrency`, `maxQueue`, `models`, `model.<i>.name`, `defaults`, `overrides`,
 * `option.<field>`.
 */
export function buildChannel(
  draft: ChannelDraft,
  type: ChannelType | undefined,
): { config: ChannelConfig; problems?: undefined } | { problems: Problems; config?: undefined } {
  const problems: Problems = {}
  const name = draft.name.trim()
  if (!name) problems.name = { key: 'required' }
  else if (!NAME.test(name)) problems.name = { key: 'name' }
  if (!draft.type) problems.type = { key: 'required' }

  const numbers: Record<string, number> = {}
  for (const [field, min] of [
    ['priority', Number.MIN_SAFE_INTEGER],
    ['weight', 0],
    ['maxConcurrency', 1],
    ['maxQueue', 0],
  ] as const) {
    const value = whole(draft[field], min)
    if (typeof value === 'number') numbers[field] = value
    else problems[field] = value
  }

  const models = draft.models.map((m) => ({ ...m, name: m.name.trim(), upstream: m.upstream.trim() }))
  if (models.length === 0) problems.models = { key: 'noModels' }
  const seen = new Set<string>()
  models.forEach((m, i) => {
    if (!m.name) problems[`model.${i}.name`] = { key: 'required' }
    else if (seen.has(`${m.kind}:${m.name}`)) problems[`model.${i}.name`] = { key: 'duplicateModel', params: { name: m.name } }
    seen.add(`${m.kind}:${m.name}`)
  })

  for (const field of ['defaults', 'overrides'] as const) {
    const problem = jsonObjectProblem(draft[field])
    if (problem) problems[field] = problem
  }

  // Options: what the channel had (settings the type does not list), then the fields.
  const options: Record<string, unknown> = { ...(draft.base?.options ?? {}) }
  for (const field of optionFields(type)) {
    const input = draft.options[field.name]
    const key = `option.${field.name}`
    if (field.kind === 'bool') {
      const had = draft.base?.options && field.name in draft.base.options
      if (input === (field.default === true) && !had) delete options[field.name]
      else options[field.name] = input === true
      continue
    }
    const source = typeof input === 'string' ? input.trim() : ''
    if (source === '') {
      // Empty: the provider's default, except a write-only setting, which stays as stored.
      if (field.kind !== 'secret') delete options[field.name]
      continue
    }
    if (field.kind === 'int') {
      const value = whole(source, Number.MIN_SAFE_INTEGER)
      if (typeof value === 'number') options[field.name] = value
      else problems[key] = value
    } else if (field.kind === 'url') {
      if (isHttpUrl(source)) options[field.name] = source
      else problems[key] = { key: 'url' }
    } else if (field.kind === 'json') {
      try {
        options[field.name] = JSON.parse(source)
      } catch (err) {
        problems[key] = { key: 'json', params: { reason: err instanceof Error ? err.message : String(err) } }
      }
    } else {
      options[field.name] = source
    }
  }

  if (Object.keys(problems).length) return { problems }

  const config: ChannelConfig = {
    ...(draft.base ?? {}),
    name,
    type: draft.type,
    models: models.map((m) => ({
      name: m.name,
      kind: m.kind,
      ...(m.upstream ? { upstream: m.upstream } : {}),
      ...(m.description ? { description: m.description } : {}),
    })),
    options,
    defaults: draft.defaults.trim() ? (JSON.parse(draft.defaults) as Record<string, unknown>) : {},
    overrides: draft.overrides.trim() ? (JSON.parse(draft.overrides) as Record<string, unknown>) : {},
    priority: numbers.priority!,
    weight: numbers.weight!,
    max_concurrency: numbers.maxConcurrency!,
    max_queue: numbers.maxQueue!,
    enabled: draft.enabled,
    client_keys: draft.clientKeys,
  }
  // The stored key is kept by sending none; a new one replaces it.
  delete config.secret
  if (draft.secret.trim() !== '') config.secret = draft.secret.trim()
  if (draft.deadline.trim()) config.deadline = draft.deadline.trim()
  else delete config.deadline
  return { config }
}

/** A channel's configuration as it is, with only `enabled` changed (the list's switch). */
export function withEnabled(view: ChannelView, enabled: boolean): ChannelConfig {
  const config: ChannelConfig = { ...view.config, enabled }
  delete config.secret
  return config
}

// The channel form's data, apart from its looks: a draft made from a provider type (its
// fields, from `GET /api/v1/admin/channel-types`) and an existing channel, the
// configuration sent back, and the server's refusals (`invalid_channel`, with
// `details.problems: [{field, message}]`) filed under the inputs they are about. Checked
// here first, so the form can mark each field before anything is sent: whole numbers,
// numbers, http(s) URLs, durations (`30s`, `5m`), lists (one item a line), JSON objects
// for defaults and overrides, at least one model, a key when the type needs one.
//
// The key is write-only: the draft holds an empty input and the stored key's mask; an
// empty input sends no `secret`, which keeps the stored key (`""`, sent only when asked,
// removes it). What the form does not show (a model's description, settings in `options`
// the type does not list) is carried over from the channel as it was.
import type { ChannelConfig, ChannelField, ChannelType, ChannelView, TaskKind } from '../api/types'

export const MODEL_KINDS: readonly TaskKind[] = ['image_to_3d', 'text_to_3d', 'text_to_image']

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
  /** The circuit breaker: failed submissions in a row that rest the channel (0: never), and for how long. */
  breakerFailures: string
  breakerCooldown: string
  models: ModelRow[]
  /** A new key; empty keeps the stored one. */
  secret: string
  /** The stored key as the server shows it (`••••1234`), or null. */
  maskedSecret: string | null
  /** Remove the stored key (sends `secret: ""`). */
  clearSecret: boolean
  /** The type's fields other than `secret`, as the inputs hold them. */
  options: Record<string, string | boolean>
  defaults: string
  overrides: string
  /** The channel as it was (null for a new one). */
  base: ChannelConfig | null
}

/** An i18n key under `channels.errors` and its values, or the server's own sentence. */
export interface Problem {
  key: string
  params?: Record<string, string | number>
  /** The server's words (English), when it refused the field. */
  message?: string
}

export type Problems = Record<string, Problem>

/** The key in `options` that the base URL choice edits. */
export const BASE_URL = 'base_url'

/** Whether the type's key goes in the top-level `secret` (rather than in `options`). */
export const isSecretField = (field: ChannelField) => field.name === 'secret'

/** The type's fields that are provider settings (`options`). */
export const optionFields = (type: ChannelType | undefined) => (type?.fields ?? []).filter((f) => !isSecretField(f))

/** The type's key field, when it takes one. */
export const secretField = (type: ChannelType | undefined) => type?.fields.find(isSecretField)

/** Whether the form offers a key input for this type (or for a channel that has one). */
export function takesSecret(type: ChannelType | undefined, draft: ChannelDraft): boolean {
  return Boolean(secretField(type)) || draft.maskedSecret !== null
}

/** The kinds a model of this type may have (and any a stored channel already uses). */
export function kindsFor(type: ChannelType | undefined, draft?: ChannelDraft): string[] {
  const kinds: string[] = type?.kinds.length ? [...type.kinds] : [...MODEL_KINDS]
  for (const m of draft?.models ?? []) if (m.kind && !kinds.includes(m.kind)) kinds.push(m.kind)
  return kinds
}

/** The base URLs to choose from: the type's, its default first. */
export function baseUrlChoices(type: ChannelType | undefined): { label: string; url: string }[] {
  if (!type) return []
  const choices = [...type.base_urls]
  if (type.default_base_url && !choices.some((c) => c.url === type.default_base_url)) {
    choices.unshift({ label: type.title, url: type.default_base_url })
  }
  return choices
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
    } else if (field.kind === 'list') {
      inputs[field.name] = Array.isArray(stored) ? stored.map(String).join('\n') : text(stored)
    } else if (field.name === BASE_URL && (stored === undefined || stored === null) && type?.default_base_url) {
      // Left out, the provider's own address is used: shown as the chosen one.
      inputs[field.name] = type.default_base_url
    } else {
      // Empty inputs take the server's defaults, shown in their hints.
      inputs[field.name] = text(stored)
    }
  }
  return inputs
}

/** A draft for a new channel of `type`, or for editing `view`. */
export function draftFor(type: ChannelType | undefined, view?: ChannelView | null): ChannelDraft {
  const config = view?.config ?? null
  const secret = config?.secret
  const firstKind: string = kindsFor(type)[0] ?? 'image_to_3d'
  const models: ModelRow[] = (config?.models ?? [{ name: '', kind: firstKind, upstream: '' }]).map((m) => ({
    name: m.name,
    kind: m.kind,
    upstream: m.upstream ?? '',
    description: m.description ?? null,
  }))
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
    breakerFailures: text(config?.breaker?.failures ?? 3),
    breakerCooldown: text(config?.breaker?.cooldown ?? '30s'),
    models,
    secret: '',
    maskedSecret: typeof secret === 'string' && secret !== '' ? secret : null,
    clearSecret: false,
    options: optionInputs(type, config ? (config.options ?? {}) : null),
    defaults: pretty(config?.defaults),
    overrides: pretty(config?.overrides),
    base: config,
  }
}

/** A new channel changing type: the type's own fields with their defaults, its kinds for the models. */
export function changeType(draft: ChannelDraft, type: ChannelType | undefined): void {
  draft.type = type?.type ?? ''
  draft.options = optionInputs(type, null)
  const kinds = kindsFor(type)
  const first: string = kinds[0] ?? 'image_to_3d'
  for (const m of draft.models) if (!kinds.includes(m.kind)) m.kind = first
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
const NUMBER = /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/
/** What the server's durations look like: `500ms`, `30s`, `5m`, `1h 30m`, `7days`. */
const DURATION = /^(\d+\s*[A-Za-zµ]+\s*)+$/

function whole(source: string, min: number): number | Problem {
  const trimmed = source.trim()
  if (!WHOLE.test(trimmed)) return { key: 'int' }
  const n = Number(trimmed)
  if (!Number.isSafeInteger(n)) return { key: 'int' }
  if (n < min) return { key: 'min', params: { min } }
  return n
}

export function isHttpUrl(source: string): boolean {
  try {
    const url = new URL(source)
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== ''
  } catch {
    return false
  }
}

export const isDuration = (source: string) => DURATION.test(source.trim())

/** One provider setting's value from its input, or why it is not one. */
function optionValue(field: ChannelField, input: string): { value: unknown } | { problem: Problem } {
  switch (field.kind) {
    case 'int': {
      const n = whole(input, Number.MIN_SAFE_INTEGER)
      return typeof n === 'number' ? { value: n } : { problem: n }
    }
    case 'number':
      return NUMBER.test(input) ? { value: Number(input) } : { problem: { key: 'number' } }
    case 'url':
      return isHttpUrl(input) ? { value: input } : { problem: { key: 'url' } }
    case 'duration':
      return isDuration(input) ? { value: input } : { problem: { key: 'duration' } }
    case 'json': {
      const problem = jsonObjectProblem(input)
      return problem ? { problem } : { value: JSON.parse(input) }
    }
    case 'list':
      return {
        value: input
          .split('\n')
          .map((line) => line.trim())
          .filter(Boolean),
      }
    default:
      return { value: input }
  }
}

/**
 * The configuration to send, or the problems by field: `name`, `type`, `priority`,
 * `weight`, `maxConcurrency`, `maxQueue`, `deadline`, `breakerFailures`,
 * `breakerCooldown`, `models`, `model.<i>.name`, `secret`, `defaults`, `overrides`,
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
    ['breakerFailures', 0],
  ] as const) {
    const value = whole(draft[field], min)
    if (typeof value === 'number') numbers[field] = value
    else problems[field] = value
  }
  if (draft.deadline.trim() && !isDuration(draft.deadline)) problems.deadline = { key: 'duration' }
  if (!isDuration(draft.breakerCooldown)) problems.breakerCooldown = { key: 'duration' }

  const models = draft.models.map((m) => ({ ...m, name: m.name.trim(), upstream: m.upstream.trim() }))
  if (models.length === 0) problems.models = { key: 'noModels' }
  const seen = new Set<string>()
  models.forEach((m, i) => {
    if (!m.name) problems[`model.${i}.name`] = { key: 'required' }
    else if (seen.has(`${m.kind}:${m.name}`)) problems[`model.${i}.name`] = { key: 'duplicateModel', params: { name: m.name } }
    seen.add(`${m.kind}:${m.name}`)
  })

  const key = secretField(type)
  if (key?.required && !draft.secret.trim() && (draft.maskedSecret === null || draft.clearSecret)) {
    problems.secret = { key: 'required' }
  }

  for (const field of ['defaults', 'overrides'] as const) {
    const problem = jsonObjectProblem(draft[field])
    if (problem) problems[field] = problem
  }

  // Options: what the channel had (settings the type does not list), then the fields.
  const had = draft.base?.options ?? {}
  const options: Record<string, unknown> = { ...had }
  for (const field of optionFields(type)) {
    const input = draft.options[field.name]
    const problemKey = `option.${field.name}`
    if (field.kind === 'bool') {
      if (input === (field.default === true) && !(field.name in had)) delete options[field.name]
      else options[field.name] = input === true
      continue
    }
    const source = typeof input === 'string' ? input.trim() : ''
    if (source === '') {
      if (field.required) problems[problemKey] = { key: 'required' }
      // Empty: the provider's default, except a write-only setting, which stays as stored.
      else if (field.kind !== 'secret') delete options[field.name]
      continue
    }
    if (field.name === BASE_URL && source === type?.default_base_url && !(BASE_URL in had)) {
      // The provider's own address, which it uses when none is set.
      delete options[field.name]
      continue
    }
    const parsed = optionValue(field, source)
    if ('problem' in parsed) problems[problemKey] = parsed.problem
    else if (Array.isArray(parsed.value) && !parsed.value.length && field.required) problems[problemKey] = { key: 'required' }
    else options[field.name] = parsed.value
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
    deadline: draft.deadline.trim() || null,
    breaker: { failures: numbers.breakerFailures!, cooldown: draft.breakerCooldown.trim() },
    enabled: draft.enabled,
    client_keys: draft.clientKeys,
  }
  // The stored key is kept by sending none; a new one replaces it; "" removes it.
  delete config.secret
  if (draft.secret.trim() !== '') config.secret = draft.secret.trim()
  else if (draft.clearSecret && draft.maskedSecret !== null) config.secret = ''
  return { config }
}

/**
 * The server's field (`name`, `models[0].kind`, `options.base_url`, `options`, `secret`,
 * `breaker.cooldown`, `config`…) as the form's problem key; `null`: the form as a whole.
 * A message about `options` that names one of the type's settings first ("`base_url`: …")
 * goes to that setting.
 */
export function problemKey(field: string, message: string, type: ChannelType | undefined): string | null {
  const known = (name: string) => optionFields(type).some((f) => f.name === name)
  const simple: Record<string, string> = {
    name: 'name',
    type: 'type',
    models: 'models',
    secret: 'secret',
    priority: 'priority',
    weight: 'weight',
    max_concurrency: 'maxConcurrency',
    max_queue: 'maxQueue',
    deadline: 'deadline',
    defaults: 'defaults',
    overrides: 'overrides',
    'breaker.failures': 'breakerFailures',
    'breaker.cooldown': 'breakerCooldown',
    breaker: 'breakerCooldown',
  }
  if (field in simple) return simple[field]!
  const model = /^models\[(\d+)\](?:\.(\w+))?$/.exec(field)
  if (model) return model[2] === 'kind' ? `model.${model[1]}.kind` : model[2] === 'upstream' ? `model.${model[1]}.upstream` : `model.${model[1]}.name`
  const option = /^options\.(\w+)/.exec(field)
  if (option && known(option[1]!)) return `option.${option[1]}`
  if (field === 'options') {
    const named = /^`(\w+)`/.exec(message)
    if (named && known(named[1]!)) return `option.${named[1]}`
    return 'options'
  }
  return null
}

/** The server's refusal filed by field: problems next to inputs, and the rest for the form. */
export function serverProblems(
  list: unknown,
  type: ChannelType | undefined,
): { problems: Problems; general: string[] } {
  const problems: Problems = {}
  const general: string[] = []
  if (!Array.isArray(list)) return { problems, general }
  for (const item of list) {
    if (!item || typeof item !== 'object') continue
    const { field, message } = item as { field?: unknown; message?: unknown }
    const text = typeof message === 'string' ? message : ''
    const key = typeof field === 'string' ? problemKey(field, text, type) : null
    if (key === null) general.push(typeof field === 'string' && field !== 'config' ? `${field}: ${text}` : text)
    else if (problems[key]) problems[key]!.message = `${problems[key]!.message} ${text}`
    else problems[key] = { key: 'server', message: text }
  }
  return { problems, general }
}

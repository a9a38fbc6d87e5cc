// Making an API token: the form's checks, what is sent, and the token's text shown once —
// with a copy button and the warning — then gone for good; lists show only its hint.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { Token } from '../src/api/types'
import { locale } from '../src/i18n'
import { emptyTokenDraft, tokenBody } from '../src/lib/accountForms'

const api = vi.hoisted(() => ({ catalog: vi.fn() }))
vi.mock('../src/api/client', async (original) => ({ ...(await original<object>()), api }))

const TEXT = 'kiln_Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXg1234'
const token = (over: Partial<Token> = {}): Token => ({
  id: 'tok-1',
  user_id: 'u1',
  name: 'ci',
  hint: '1234',
  models: ['painter'],
  spend_cap: 500,
  spent: 0,
  rate_per_minute: 30,
  webhook_url: null,
  expires_at: null,
  last_used_at: null,
  revoked_at: null,
  created_at: '2026-11-25T10:00:00Z',
  ...over,
})

beforeEach(() => {
  locale.value = 'en'
  api.catalog.mockResolvedValue({
    models: [
      { name: 'relief', kind: 'image_to_3d' },
      { name: 'painter', kind: 'text_to_image' },
      { name: 'painter', kind: 'text_to_3d' },
    ],
  })
  Object.defineProperty(navigator, 'clipboard', { value: { writeText: vi.fn().mockResolvedValue(undefined) }, configurable: true })
})
afterEach(() => {
  vi.clearAllMocks()
  document.body.innerHTML = ''
})

describe('a new token’s settings', () => {
  const now = new Date(2026, 10, 25, 12, 0, 0)
  it('become the API’s body, leaving out what was left empty', () => {
    expect(tokenBody({ ...emptyTokenDraft(), name: ' ci ' }, now)).toEqual({ body: { name: 'ci' } })
    const full = tokenBody(
      { name: 'ci', models: ['painter'], spendCap: '500', rate: '30', webhook: 'https://hooks.example.com/kiln', expires: '2026-12-31' },
      now,
    )
    expect(full.body).toEqual({
      name: 'ci',
      models: ['painter'],
      spend_cap: 500,
      rate_per_minute: 30,
      webhook_url: 'https://hooks.example.com/kiln',
      expires_at: new Date(2026, 11, 31, 23, 59, 59).toISOString(),
    })
  })
  it('are refused field by field when wrong', () => {
    expect(tokenBody({ name: '', models: [], spendCap: '-1', rate: '0', webhook: 'ftp://x', expires: '2026-11-24' }, now).errors).toEqual({
      name: 'form.required',
      spendCap: 'form.wholeNonNegative',
      rate: 'form.wholePositive',
      webhook: 'form.url',
      expires: 'tokens.pastExpiry',
    })
  })
})

describe('the token form', () => {
  async function mountForm(create = vi.fn().mockResolvedValue({ token: TEXT, item: token() })) {
    const TokenForm = (await import('../src/components/TokenForm.vue')).default
    const wrapper = mount(TokenForm, { props: { create, idPrefix: 't' }, attachTo: document.body })
    await flushPromises()
    return { wrapper, create }
  }

  it('offers the catalog’s models once each, and sends what was chosen', async () => {
    const { wrapper, create } = await mountForm()
    const boxes = wrapper.findAll('[data-testid="token-model"]')
    expect(boxes.map((b) => (b.element as HTMLInputElement).value)).toEqual(['painter', 'relief'])
    // Every field has a label.
    for (const input of wrapper.findAll('input:not([type="checkbox"])')) {
      expect(wrapper.find(`label[for="${input.attributes('id')}"]`).exists(), input.attributes('id')).toBe(true)
    }
    await wrapper.get('[data-testid="token-name"]').setValue('ci')
    await boxes[0]!.setValue(true)
    await wrapper.get('[data-testid="token-cap"]').setValue('500')
    await wrapper.get('[data-testid="token-rate"]').setValue('30')
    await wrapper.get('[data-testid="token-form"]').trigger('submit')
    await flushPromises()
    expect(create).toHaveBeenCalledWith({ name: 'ci', models: ['painter'], spend_cap: 500, rate_per_minute: 30 })
  })

  it('shows the token’s text once, with a copy button and the warning, then never again', async () => {
    const { wrapper } = await mountForm()
    expect(wrapper.find('[data-testid="token-text"]').exists()).toBe(false)
    await wrapper.get('[data-testid="token-name"]').setValue('ci')
    await wrapper.get('[data-testid="token-form"]').trigger('submit')
    await flushPromises()

    const shown = wrapper.get('[data-testid="token-shown"]')
    expect((wrapper.get('[data-testid="token-text"]').element as HTMLInputElement).value).toBe(TEXT)
    expect(wrapper.get('[data-testid="token-text"]').attributes('readonly')).toBeDefined()
    expect(shown.text()).toContain('you will not see it again')
    expect(wrapper.emitted('created')?.[0]).toEqual([token()])
    // The form is empty again, ready for another.
    expect((wrapper.get('[data-testid="token-name"]').element as HTMLInputElement).value).toBe('')

    await wrapper.get('[data-testid="token-copy"]').trigger('click')
    await flushPromises()
    expect(navigator.clipboard.writeText).toHaveBeenCalledWith(TEXT)
    expect(shown.text()).toContain('Copied.')

    await wrapper.get('[data-testid="token-dismiss"]').trigger('click')
    expect(wrapper.find('[data-testid="token-text"]').exists()).toBe(false)
    expect(wrapper.html()).not.toContain(TEXT)
  })

  it('says why the server refused', async () => {
    const { ApiError } = await import('../src/api/client')
    const { wrapper } = await mountForm(vi.fn().mockRejectedValue(new ApiError('invalid_webhook_url', '', 422)))
    await wrapper.get('[data-testid="token-name"]').setValue('ci')
    await wrapper.get('[data-testid="token-form"]').trigger('submit')
    await flushPromises()
    expect(wrapper.get('[data-testid="token-error"]').text()).toBe('The webhook URL is not an http(s) address kiln may send to.')
    expect(wrapper.find('[data-testid="token-text"]').exists()).toBe(false)
  })

  it('marks a wrong field and sends nothing', async () => {
    const { wrapper, create } = await mountForm()
    await wrapper.get('[data-testid="token-rate"]').setValue('fast')
    await wrapper.get('[data-testid="token-form"]').trigger('submit')
    await flushPromises()
    expect(create).not.toHaveBeenCalled()
    const rate = wrapper.get('[data-testid="token-rate"]')
    expect(rate.attributes('aria-invalid')).toBe('true')
    expect(wrapper.get(`#${rate.attributes('aria-describedby')!.split(' ')[1]}`).text()).toBe('Enter a whole number, 1 or more.')
  })
})

describe('the token list', () => {
  it('shows a hint, never the text, and revokes after asking', async () => {
    const TokenTable = (await import('../src/components/TokenTable.vue')).default
    const revoke = vi.fn().mockResolvedValue(undefined)
    const items = [token(), token({ id: 'old', name: 'old', revoked_at: '2026-11-20T00:00:00Z' })]
    const wrapper = mount(TokenTable, { props: { items, revoke, idPrefix: 'l' }, attachTo: document.body })
    const rows = wrapper.findAll('[data-testid="token-row"]')
    // Revoked tokens are hidden until asked for.
    expect(rows).toHaveLength(1)
    expect(rows[0]!.text()).toContain('kiln_…1234')
    expect(rows[0]!.text()).toContain('painter')
    await wrapper.get('[data-testid="tokens-show-all"]').setValue(true)
    expect(wrapper.findAll('[data-testid="token-row"]')).toHaveLength(2)

    await wrapper.get('[data-testid="token-revoke"]').trigger('click')
    await flushPromises()
    expect(revoke).not.toHaveBeenCalled()
    const yes = wrapper.get('[data-testid="token-revoke-yes"]')
    expect(document.activeElement).toBe(yes.element)
    await yes.trigger('click')
    await flushPromises()
    expect(revoke).toHaveBeenCalledWith('tok-1')
    expect(wrapper.emitted('revoked')).toHaveLength(1)
    expect(wrapper.text()).toContain('Token “ci” was revoked.')
  })
})

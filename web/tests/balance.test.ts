// An admin's balance change: exactly one of `delta` and `set` is sent, with the note.
import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { User } from '../src/api/types'
import { locale } from '../src/i18n'
import { balanceChange } from '../src/lib/accountForms'

const admin = vi.hoisted(() => ({ setBalance: vi.fn() }))
vi.mock('../src/api/admin', async (original) => ({ ...(await original<object>()), admin }))

const USER: User = { id: 'u1', username: 'ann', role: 'user', balance: 120, max_active: null, disabled: false, created_at: '', updated_at: '' }

beforeEach(() => {
  locale.value = 'en'
  admin.setBalance.mockResolvedValue({ balance: 620 })
})
afterEach(() => vi.clearAllMocks())

describe('a balance change', () => {
  it('is exactly one of delta and set', () => {
    expect(balanceChange('delta', '500', '')).toEqual({ change: { delta: 500 } })
    expect(balanceChange('delta', ' -20 ', 'refund')).toEqual({ change: { delta: -20, note: 'refund' } })
    expect(balanceChange('set', '0', ' reset ')).toEqual({ change: { set: 0, note: 'reset' } })
    for (const result of [balanceChange('delta', '5', ''), balanceChange('set', '5', '')]) {
      expect(Object.keys(result.change!).filter((k) => k === 'delta' || k === 'set')).toHaveLength(1)
    }
  })
  it('refuses what is not a whole number, a zero delta and a negative balance', () => {
    expect(balanceChange('delta', '1.5', '')).toEqual({ error: 'balance.invalid' })
    expect(balanceChange('delta', '', '')).toEqual({ error: 'balance.invalid' })
    expect(balanceChange('delta', '0', '')).toEqual({ error: 'balance.zero' })
    expect(balanceChange('set', '-1', '')).toEqual({ error: 'balance.negative' })
  })
})

describe('the balance form', () => {
  async function mountForm() {
    const BalanceForm = (await import('../src/components/BalanceForm.vue')).default
    return mount(BalanceForm, { props: { user: USER } })
  }

  it('tops up with a delta and a note, and says the new balance', async () => {
    const wrapper = await mountForm()
    expect(wrapper.get('[data-testid="user-balance"]').text()).toBe('120')
    await wrapper.get('[data-testid="balance-amount"]').setValue('500')
    await wrapper.get('[data-testid="balance-note"]').setValue('invoice 42')
    await wrapper.get('[data-testid="balance-form"]').trigger('submit')
    await flushPromises()
    expect(admin.setBalance).toHaveBeenCalledWith('u1', { delta: 500, note: 'invoice 42' })
    expect(wrapper.emitted('changed')).toEqual([[620]])
    expect(wrapper.get('[data-testid="balance-done"]').text()).toBe('The balance is now 620.')
  })

  it('sets the balance when asked to, and never sends both', async () => {
    const wrapper = await mountForm()
    await wrapper.get('[data-testid="balance-mode-set"]').setValue(true)
    expect(wrapper.get('label[for="balance-amount"]').text()).toBe('New balance')
    await wrapper.get('[data-testid="balance-amount"]').setValue('50')
    await wrapper.get('[data-testid="balance-form"]').trigger('submit')
    await flushPromises()
    expect(admin.setBalance).toHaveBeenCalledWith('u1', { set: 50 })
  })

  it('marks a wrong amount and sends nothing', async () => {
    const wrapper = await mountForm()
    await wrapper.get('[data-testid="balance-amount"]').setValue('0')
    await wrapper.get('[data-testid="balance-form"]').trigger('submit')
    await flushPromises()
    expect(admin.setBalance).not.toHaveBeenCalled()
    expect(wrapper.get('[data-testid="balance-amount"]').attributes('aria-invalid')).toBe('true')
    expect(wrapper.get('#balance-amount-error').text()).toBe('Adding 0 changes nothing.')
  })
})

// @ts-check
// End-to-end, the console as an admin uses it: kiln in `auth.mode = "tokens"` with its
// first admin from KILN_ADMIN__USERNAME / KILN_ADMIN__PASSWORD, a fake ModelScope in this
// process, Debian's Chromium. The admin signs in, makes a ModelScope channel in the
// console (test connection first), a user with a balance, a price for the channel's
// model and an API token for the user (its text copied from the page); OpenAI's own
// Python client makes a picture with that token through kiln's OpenAI face; the console
// then shows the usage record, and the user's balance down by the price.
// Run with `npm run e2e` (make test does, after `make test-deps` made tests/python/.venv).
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { REPO, launchBrowser, newPage, startFakeModelScope, startKiln } from './harness.mjs'

const ADMIN = 'root'
const ADMIN_PASSWORD = 'e2e-admin-password-7'
const CHANNEL = 'modelscope-e2e'
const MODEL = 'qwen-e2e'
const UPSTREAM = 'Qwen/Qwen-Image'
const USER = 'alice'
// Credits: the user gets 100; a picture costs 3 a task and 4 an image.
const BALANCE = 100
const PER_TASK = 3
const PER_IMAGE = 4

/** The Python with OpenAI's client: $KILN_TEST_PYTHON (the Makefile's), else tests/python/.venv's. */
function python() {
  const path = process.env.KILN_TEST_PYTHON ?? join(REPO, 'tests/python/.venv/bin/python')
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`make test-deps\` (scripts/deps.sh --test), or set KILN_TEST_PYTHON to a Python with the openai package`)
  }
  return path
}

// OpenAI's client, unchanged: one picture by URL with the user's token, downloaded and
// checked to be a PNG; prints what came back as one JSON line.
const GENERATE = `
import json, os, sys, urllib.request
from openai import OpenAI
client = OpenAI(base_url=os.environ["KILN_URL"] + "/v1", api_key=os.environ["KILN_TOKEN"], max_retries=0, timeout=120)
answer = client.images.generate(model=os.environ["KILN_MODEL"], prompt="a red vase on a wooden table")
url = answer.data[0].url
with urllib.request.urlopen(url, timeout=30) as response:
    data = response.read()
print(json.dumps({"created": answer.created, "count": len(answer.data), "url": url, "png": data.startswith(b"\\x89PNG\\r\\n\\x1a\\n"), "bytes": len(data)}))
`

/**
 * @param {string} url @param {string} token
 * @returns {Promise<{ created: number, count: number, url: string, png: boolean, bytes: number }>}
 */
function generate(url, token) {
  return new Promise((resolve, reject) => {
    execFile(
      python(),
      ['-c', GENERATE],
      { env: { ...process.env, KILN_URL: url, KILN_TOKEN: token, KILN_MODEL: MODEL, PYTHONUNBUFFERED: '1' }, timeout: 180_000 },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`the openai client failed: ${error.message}\n${stdout}\n${stderr}`))
        else resolve(JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}'))
      },
    )
  })
}

/**
 * Asks again (`refresh`) until `check` holds: a task's record is settled as it ends, so
 * a page read just then may still show it pending.
 * @param {() => Promise<void>} refresh @param {() => Promise<boolean>} check @param {string} what
 */
async function eventually(refresh, check, what) {
  const deadline = Date.now() + 30_000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 250))
    await refresh()
  }
}

/** @type {Awaited<ReturnType<typeof startKiln>>} */
let kiln
/** @type {Awaited<ReturnType<typeof startFakeModelScope>>} */
let fake
/** @type {import('playwright-core').Browser} */
let browser

before(async () => {
  python()
  fake = await startFakeModelScope({ pendingFor: 400 })
  kiln = await startKiln({
    config: '[auth]\nmode = "tokens"\n',
    env: { KILN_ADMIN__USERNAME: ADMIN, KILN_ADMIN__PASSWORD: ADMIN_PASSWORD },
  })
  browser = await launchBrowser()
})
after(async () => {
  await browser?.close()
  await kiln?.stop()
  await fake?.stop()
})

describe('the console', () => {
  it('makes a ModelScope channel, a user, a price and a token; the openai client spends it; usage and balance show it', async () => {
    const { page, problems } = await newPage(browser)

    // Signing in: tokens mode sends an anonymous visitor to the sign-in page, and back.
    await page.goto(`${kiln.url}/console`)
    await page.waitForURL((u) => u.pathname === '/signin')
    await page.getByTestId('signin-username').fill(ADMIN)
    await page.getByTestId('signin-password').fill(ADMIN_PASSWORD)
    await page.getByTestId('signin-submit').click()
    await page.waitForURL((u) => u.pathname === '/console')
    await page.getByTestId('console-nav').waitFor()

    // A ModelScope channel pointing at the fake, tested before it is saved.
    await page.getByTestId('console-link-channels').click()
    await page.waitForURL((u) => u.pathname === '/console/channels')
    await page.locator('[data-testid="channel-new"]:enabled').click()
    await page.getByTestId('cf-name').fill(CHANNEL)
    await page.getByTestId('cf-type').selectOption('modelscope')
    await page.getByTestId('cf-secret').fill(fake.key)
    // ModelScope's own address is offered first; the fake is another.
    assert.equal(await page.getByTestId('cf-base-choice').inputValue(), 'https://api-inference.modelscope.cn')
    await page.getByTestId('cf-base-choice').selectOption('__other__')
    await page.getByTestId('cf-opt-base_url').fill(fake.url)
    await page.getByTestId('cf-opt-poll_interval').fill('250ms')
    await page.getByTestId('cf-model-name').fill(MODEL)
    await page.getByTestId('cf-model-kind').selectOption('text_to_image')
    await page.getByTestId('cf-model-upstream').fill(UPSTREAM)
    await page.getByTestId('cf-test').click()
    const draftTest = page.locator('[data-testid="cf-test-result"] [data-ok]')
    await draftTest.waitFor()
    assert.equal(await draftTest.getAttribute('data-ok'), 'true', await draftTest.innerText())
    assert.match(await draftTest.innerText(), /lists 2 models/)
    const probe = fake.requests.find((r) => r.method === 'GET' && r.path === '/v1/models')
    assert.equal(probe?.headers.authorization, `Bearer ${fake.key}`)

    await page.getByTestId('cf-save').click()
    const channel = page.locator(`[data-testid="channel"][data-channel="${CHANNEL}"]`)
    await channel.waitFor()
    assert.match(await page.getByTestId('channels-notice').innerText(), new RegExp(`${CHANNEL}.+saved`))
    assert.equal(await channel.getByTestId('channel-source').isVisible(), true)
    await channel.locator('[data-testid="channel-available"][data-available="true"]').waitFor()
    // The key is shown masked, never in full.
    assert.doesNotMatch(await channel.getByTestId('channel-config').textContent() ?? '', new RegExp(fake.key))
    await channel.getByTestId('channel-test').click()
    const liveTest = channel.locator('[data-testid="channel-test-result"] [data-ok]')
    await liveTest.waitFor()
    assert.equal(await liveTest.getAttribute('data-ok'), 'true', await liveTest.innerText())

    // A user with a balance.
    await page.getByTestId('console-link-users').click()
    await page.getByTestId('create-user-open').click()
    await page.getByTestId('create-user-username').fill(USER)
    await page.getByTestId('create-user-password').fill('alice-password-1')
    await page.getByTestId('create-user-role').selectOption('user')
    await page.getByTestId('create-user-submit').click()
    await page.getByTestId('create-user-done').waitFor()
    const row = page.locator(`[data-testid="user-row"][data-user="${USER}"]`)
    await row.getByTestId('user-manage-open').click()
    const manage = page.getByTestId('user-manage')
    await manage.getByTestId('balance-amount').fill(String(BALANCE))
    await manage.getByTestId('balance-note').fill('e2e top-up')
    await manage.getByTestId('balance-submit').click()
    await manage.getByTestId('balance-done').waitFor()
    assert.equal((await row.getByTestId('user-row-balance').innerText()).trim(), String(BALANCE))

    // An API token for the user: its text is on the page this once.
    await manage.getByTestId('user-token-open').click()
    await manage.getByTestId('token-name').fill('e2e-openai')
    await manage.getByTestId('token-submit').click()
    const tokenText = manage.getByTestId('token-text')
    await tokenText.waitFor()
    const token = await tokenText.inputValue()
    assert.match(token, /^kiln_[A-Za-z0-9_-]{43}$/)
    await manage.getByTestId('token-dismiss').click()
    await manage.locator('[data-testid="token-row"]').first().waitFor()
    assert.doesNotMatch(await manage.innerText(), new RegExp(token))

    // A price for the channel's model.
    await page.getByTestId('console-link-prices').click()
    const price = page.locator(`[data-testid="price-row"][data-model="${MODEL}"]`)
    await price.getByTestId('price-task').fill(String(PER_TASK))
    await price.getByTestId('price-image').fill(String(PER_IMAGE))
    await price.getByTestId('price-save').click()
    await price.getByTestId('price-note').waitFor()

    // OpenAI's Python client, with the user's token, through kiln to the fake ModelScope.
    const made = await generate(kiln.url, token)
    assert.equal(made.count, 1)
    assert.equal(made.png, true, JSON.stringify(made))
    const submit = fake.requests.find((r) => r.method === 'POST' && r.path === '/v1/images/generations')
    assert.equal(submit?.headers['x-modelscope-async-mode'], 'true')
    assert.equal(submit?.body.model, UPSTREAM)
    assert.equal(submit?.headers.authorization, `Bearer ${fake.key}`)
    const poll = fake.requests.find((r) => r.method === 'GET' && r.path.startsWith('/v1/tasks/'))
    assert.equal(poll?.headers['x-modelscope-task-type'], 'image_generation')

    // The usage record, charged the price, in the console.
    const charged = PER_TASK + PER_IMAGE
    await page.getByTestId('console-link-usage').click()
    const usage = page.locator('[data-testid="usage-row"]', { hasText: MODEL })
    await usage.waitFor()
    await eventually(
      () => page.getByTestId('usage-apply').click(),
      async () => (await page.getByTestId('usage-charged').innerText()).trim() === String(charged),
      'the usage record to be charged',
    )
    const cells = await usage.locator('td').allInnerTexts()
    assert.ok(cells.some((c) => c.trim() === USER), cells.join(' | '))
    assert.ok(cells.some((c) => c.trim() === 'e2e-openai'), cells.join(' | '))
    assert.ok(cells.some((c) => c.trim() === CHANNEL), cells.join(' | '))
    assert.ok(cells.some((c) => /Succeeded/.test(c)), cells.join(' | '))
    assert.ok(cells.some((c) => c.trim() === String(charged)), cells.join(' | '))
    assert.equal((await page.getByTestId('usage-charged').innerText()).trim(), String(charged))

    // The user's balance, down by the price.
    await page.getByTestId('console-link-users').click()
    const balance = page.locator(`[data-testid="user-row"][data-user="${USER}"] [data-testid="user-row-balance"]`)
    await balance.waitFor()
    await eventually(
      () => page.getByTestId('users-refresh').click(),
      async () => (await balance.innerText()).trim() === String(BALANCE - charged),
      `${USER}'s balance to be ${BALANCE - charged}`,
    )

    // The channel's last hour counts the picture.
    await page.getByTestId('console-link-channels').click()
    const ended = page.locator(`[data-channel="${CHANNEL}"] [data-testid="channel-ended"]`)
    await ended.waitFor()
    await eventually(
      () => page.getByTestId('channels-refresh').click(),
      async () => /^1 succeeded/.test((await ended.innerText()).trim()),
      'the channel to count the picture',
    )

    assert.deepEqual(problems, [])
    await page.context().close()
  })
})

// @ts-check
// End-to-end: the real kiln binary, Debian's Chromium, the page as a person uses it.
// Run with `npm run e2e` (make test does, after building kiln).
import assert from 'node:assert/strict'
import { mkdirSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { expectModelDrawn, FIXTURES, launchBrowser, newPage, OUTPUT, postPicture, startFakeImageApi, startKiln } from './harness.mjs'

mkdirSync(OUTPUT, { recursive: true })

// One relief run at a time, so that tasks put ahead of the page's own (made slow by their
// params: about 2 s each instead of 0.5 s) keep it waiting in line long enough to be
// watched, and reloaded, while it waits. The page's own tasks use the defaults: light
// models that SwiftShader draws quickly even on a busy machine.
// A short shutdown grace: a restart hands the slow task that runs back at once instead of
// letting it (and its finishing step, seconds of conversions in a debug build) run for up
// to 30 s while the page's stream is down; that long, the page gives up on the stream and
// polls, which is not what the reconnection test watches for.
const CONFIG = `
[server]
shutdown_grace = "2s"

[[channels]]
name = "relief"
type = "relief"
max_concurrency = 1
max_queue = 12
[[channels.models]]
name = "relief"
kind = "image_to_3d"
`
const SLOW = JSON.stringify({ resolution: 512, texture_size: 4096, max_triangles: 500000 })

/** @type {Awaited<ReturnType<typeof startKiln>>} */
let kiln
/** @type {import('playwright-core').Browser} */
let browser

before(async () => {
  kiln = await startKiln({ config: CONFIG })
  browser = await launchBrowser()
})
after(async () => {
  await browser?.close()
  await kiln?.stop()
})

/**
 * Records every status line and connection state the task page shows, from the first
 * script on each load, so that quick states are not missed. Read with `seen(page)`.
 * @param {import('playwright-core').BrowserContext} context
 */
async function recordStatuses(context) {
  await context.addInitScript(() => {
    const seen = /** @type {string[]} */ ([])
    Object.assign(window, { __seen: seen })
    const note = () => {
      const card = document.querySelector('[data-testid="progress-card"]')
      const text = document.querySelector('[data-testid="status-text"]')?.textContent?.trim() ?? ''
      const transport = document.querySelector('[data-testid="transport"]')?.getAttribute('data-transport') ?? ''
      const entry = `${card?.getAttribute('data-status') ?? 'none'}|${text}|${transport}`
      if (seen[seen.length - 1] !== entry) seen.push(entry)
    }
    document.addEventListener('DOMContentLoaded', () => {
      new MutationObserver(note).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true })
    })
  })
}

/** @param {import('playwright-core').Page} page */
async function seen(page) {
  return /** @type {string[]} */ (await page.evaluate(() => /** @type {any} */ (window).__seen ?? []))
}

/** Fills the queue with slow tasks straight through the API. */
/** @param {number} count */
async function fillQueue(count) {
  const ids = []
  for (let i = 0; i < count; i++) {
    const { status, body } = await postPicture(kiln.url, join(FIXTURES, 'large-4096x3072.jpg'), { params: SLOW })
    assert.equal(status, 202, JSON.stringify(body))
    ids.push(body.id)
  }
  return ids
}

describe('the web page', () => {
  it('uploads a picture, shows its place in line and its progress, then draws the model', async () => {
    const { page, context, problems } = await newPage(browser)
    await recordStatuses(context)
    /** @type {string[]} */
    const requested = []
    page.on('request', (request) => requested.push(request.url()))
    await page.goto(kiln.url)
    await page.getByRole('heading', { level: 1 }).waitFor()
    await page.locator('[data-testid="file"]').setInputFiles(join(FIXTURES, 'vase.png'))
    await page.locator('[data-testid="preview"]').waitFor()
    // three.js is not part of creating a task.
    const viewerChunk = (/** @type {string} */ url) => /\/assets\/scene-[\w-]+\.js$/.test(url)
    assert.equal(requested.filter(viewerChunk).length, 0, 'three.js loaded on the create page')
    await fillQueue(2)
    await page.locator('[data-testid="submit"]').click()
    await page.waitForURL(/\/tasks\/[0-9a-f-]+$/)
    await expectModelDrawn(page, 'vase-desktop')
    assert.equal(requested.filter(viewerChunk).length, 1, 'three.js loaded once, for the viewer')
    const states = await seen(page)
    assert.ok(states.some((s) => /^queued\|(2nd|3rd) in line\|live$/.test(s)), `no place in line among ${states}`)
    assert.ok(
      states.some((s) => /^running\|(Starting|Finding the object|Building the shape|Painting the surface|Packing the model|Saving the result)/.test(s)),
      `no stage among ${states}`,
    )
    // Metadata and the download.
    const metadata = page.locator('[data-testid="metadata"]')
    await metadata.waitFor()
    assert.match(await metadata.innerText(), /GLB/)
    assert.ok(Number((await page.locator('[data-testid="triangles"]').innerText()).replace(/\D/g, '')) > 100)
    const href = await page.locator('[data-testid="download"]').getAttribute('href')
    assert.match(href ?? '', /\/files\/reconstruction\/.+\/model\.glb$/)
    const glb = await fetch(new URL(href ?? '', kiln.url))
    assert.equal(glb.status, 200)
    assert.equal(Buffer.from(await glb.arrayBuffer()).subarray(0, 4).toString(), 'glTF')
    // The viewer's controls change the picture and put it back.
    const before = await page.locator('[data-testid="viewer-canvas"]').screenshot()
    await page.locator('[data-testid="background-studio"]').click()
    await page.locator('[data-testid="wireframe"]').click()
    await page.waitForTimeout(300)
    const after = await page.locator('[data-testid="viewer-canvas"]').screenshot()
    assert.notDeepEqual(before, after)
    assert.equal(await page.locator('[data-testid="wireframe"]').getAttribute('aria-pressed'), 'true')
    // Drag to turn, then reset.
    const box = await page.locator('[data-testid="viewer-canvas"]').boundingBox()
    assert.ok(box)
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2)
    await page.mouse.down()
    await page.mouse.move(box.x + box.width / 2 + 150, box.y + box.height / 2 + 40, { steps: 8 })
    await page.mouse.up()
    await page.locator('[data-testid="reset"]').click()
    assert.deepEqual(problems, [])
    await context.close()
  })

  it('refuses each invalid picture with the words the server uses', async () => {
    const { page, context, problems } = await newPage(browser)
    await page.goto(kiln.url)
    const files = readdirSync(join(FIXTURES, 'invalid')).sort()
    assert.ok(files.length >= 6)
    for (const name of files) {
      const path = join(FIXTURES, 'invalid', name)
      const server = await postPicture(kiln.url, path).catch(() => null)
      await page.locator('[data-testid="file"]').setInputFiles(path)
      const error = page.locator('[data-testid="error"]')
      // What the page cannot tell from the bytes it has (a truncated file the browser still
      // decodes) the server tells after the upload.
      await Promise.race([
        error.waitFor({ timeout: 10_000 }),
        page.locator('[data-testid="preview"]').waitFor({ timeout: 10_000 }).then(() => page.locator('[data-testid="submit"]').click()),
      ])
      await error.waitFor({ timeout: 15_000 })
      const shown = (await error.innerText()).trim()
      if (server) {
        assert.equal(shown, server.body.error.message, name)
        assert.equal(await error.getAttribute('data-code'), server.body.error.code, name)
      } else {
        // The server cut the upload of an oversized file before the client finished sending it.
        assert.equal(shown, 'File too large: the limit is 10 MB.', name)
      }
      assert.equal(page.url(), `${kiln.url}/`, `${name} must not start a task`)
    }
    // The same refusal in Chinese.
    await page.locator('[data-testid="language"]').selectOption('zh-CN')
    await page.locator('[data-testid="file"]').setInputFiles(join(FIXTURES, 'invalid', 'not-supported.gif'))
    await page.locator('[data-testid="error"]', { hasText: '不支持的图片格式' }).waitFor()
    await page.locator('[data-testid="language"]').selectOption('en')
    assert.deepEqual(problems, [])
    await context.close()
  })

  it('picks the stream up again after a reload mid-task', async () => {
    const { page, context, problems } = await newPage(browser)
    await recordStatuses(context)
    await fillQueue(3)
    const { body: task } = await postPicture(kiln.url, join(FIXTURES, 'mug.jpg'))
    await page.goto(`${kiln.url}/tasks/${task.id}`)
    await page.locator('[data-testid="status-text"]', { hasText: /in line/ }).waitFor()
    await page.reload()
    await expectModelDrawn(page, 'mug-after-reload')
    // After the reload: in line again, live, then the stages, then the model.
    const states = await seen(page)
    assert.ok(states.some((s) => /^queued\|.+ in line\|live$/.test(s)), `after the reload: ${states}`)
    assert.ok(states.some((s) => s.startsWith('running|')), `after the reload: ${states}`)
    assert.deepEqual(problems, [])
    await context.close()
  })

  it('reconnects when the stream drops (the server restarts mid-task) and still gets to the model', async () => {
    const { page, context, problems } = await newPage(browser)
    await recordStatuses(context)
    await fillQueue(3)
    const { body: task } = await postPicture(kiln.url, join(FIXTURES, 'mug.jpg'))
    await page.goto(`${kiln.url}/tasks/${task.id}`)
    await page.locator('[data-testid="status-text"]', { hasText: /in line/ }).waitFor()
    await page.locator('[data-testid="transport"][data-transport="live"]').waitFor()
    // A graceful stop ends every stream without a terminal event; the browser reconnects
    // with Last-Event-ID once kiln listens again, and the log fills in what it missed.
    await kiln.restart()
    await expectModelDrawn(page, 'mug-after-restart')
    const states = await seen(page)
    const dropped = states.findIndex((s) => s.endsWith('|reconnecting'))
    assert.ok(dropped >= 0, `no reconnection among ${states}`)
    assert.ok(states.slice(dropped).some((s) => s.endsWith('|live')), `not live again after the drop: ${states}`)
    assert.ok(!states.some((s) => s.endsWith('|polling')), `fell back to polling: ${states}`)
    // The browser logs the refused reconnection attempts while kiln was down.
    assert.deepEqual(problems.filter((p) => !/events|ERR_CONNECTION_REFUSED|EventSource/.test(p)), [])
    await context.close()
  })

  it('opens /tasks/{id} directly, on a phone, in Chinese', async () => {
    const { body: task } = await postPicture(kiln.url, join(FIXTURES, 'toy.webp'))
    const { page, context, problems } = await newPage(browser, { width: 360, height: 740, locale: 'zh-CN', isMobile: true })
    await page.goto(`${kiln.url}/tasks/${task.id}`)
    await expectModelDrawn(page, 'toy-phone')
    assert.equal(await page.locator('html').getAttribute('lang'), 'zh-CN')
    await page.locator('nav', { hasText: '图片库' }).waitFor()
    const width = await page.evaluate(() => document.documentElement.scrollWidth)
    assert.ok(width <= 360, `the page is ${width} px wide on a 360 px screen`)
    // An unknown task says so.
    await page.goto(`${kiln.url}/tasks/01900000-0000-7000-8000-000000000000`)
    await page.getByRole('heading', { name: '没有这个 ID 的任务。' }).waitFor()
    assert.deepEqual(problems, [])
    await context.close()
  })

  it('falls back to polling when the event stream cannot be opened', async () => {
    const { page, context, problems } = await newPage(browser)
    await recordStatuses(context)
    await page.route('**/events*', (route) => route.fulfill({ status: 502, body: 'bad gateway' }))
    let polls = 0
    page.on('request', (request) => {
      if (/\/api\/v1\/tasks\/[^/]+\/status$/.test(request.url())) polls++
    })
    // Tasks ahead (about 1.4 s each on an idle machine) keep this one waiting past the
    // reconnection attempts (1 + 2 + 4 s).
    await fillQueue(8)
    const { body: task } = await postPicture(kiln.url, join(FIXTURES, 'vase.png'))
    await page.goto(`${kiln.url}/tasks/${task.id}`)
    await expectModelDrawn(page, 'vase-polling', 240_000)
    const states = await seen(page)
    assert.ok(states.some((s) => s.endsWith('|reconnecting')), `${states}`)
    assert.ok(states.some((s) => /^queued\|.+ in line\|polling$/.test(s)), `${states}`)
    assert.ok(polls >= 1, `${polls} polls`)
    assert.deepEqual(problems.filter((p) => !/events|EventSource/.test(p)), [])
    await context.close()
  })

  it('makes a new model from a picture in the library, and lists the history', async () => {
    const { page, context, problems } = await newPage(browser)
    await page.goto(`${kiln.url}/library`)
    const card = page.locator('[data-testid="picture"]').first()
    await card.waitFor()
    // The picture's own thumbnail (its tasks' previews are pictures too).
    const thumb = card.locator('.thumb img')
    await thumb.waitFor()
    // Loaded (the element shows before its picture arrives), then a thumbnail, not the
    // stored picture.
    await thumb.evaluate(
      (img) =>
        /** @type {HTMLImageElement} */ (img).complete ||
        new Promise((resolve) => img.addEventListener('load', resolve, { once: true })),
    )
    const natural = await thumb.evaluate((img) => /** @type {HTMLImageElement} */ (img).naturalWidth)
    assert.ok(natural > 0 && natural <= 320, `thumbnail ${natural} px wide`)
    assert.match((await thumb.getAttribute('src')) ?? '', /\/api\/v1\/pictures\/[0-9a-f-]+\/thumbnail$/)
    const before = (await (await fetch(`${kiln.url}/api/v1/pictures`)).json()).total
    await card.locator('[data-testid="create-again"]').click()
    await page.waitForURL(/\?picture=/)
    await page.locator('[data-testid="preview"]').waitFor()
    await page.locator('[data-testid="submit"]').click()
    await page.waitForURL(/\/tasks\//)
    await expectModelDrawn(page, 'from-library')
    const afterwards = (await (await fetch(`${kiln.url}/api/v1/pictures`)).json()).total
    assert.equal(afterwards, before, 'nothing was uploaded again')
    await page.getByRole('link', { name: 'History' }).click()
    await page.locator('[data-testid="history-row"]').first().waitFor()
    await page.locator('[data-testid="status-filter"]').selectOption('succeeded')
    await page.waitForFunction(() =>
      [...document.querySelectorAll('[data-testid="history-row"] .badge')].every((b) => b.classList.contains('succeeded')),
    )
    await page.locator('[data-testid="history-row"] a').first().click()
    await expectModelDrawn(page, 'from-history')
    assert.deepEqual(problems, [])
    await context.close()
  })

  it('keeps the API’s JSON 404s and serves the page with a strict policy', async () => {
    for (const path of ['/api/v1/nope', '/files/nope', '/health/x', '/assets/missing.js']) {
      const response = await fetch(kiln.url + path)
      assert.equal(response.status, 404, path)
      assert.match((await response.json()).error.code, /not_found$/, path)
    }
    const page = await fetch(`${kiln.url}/library`)
    assert.equal(page.status, 200)
    const policy = page.headers.get('content-security-policy') ?? ''
    // WebAssembly for the viewer's meshopt decoder, and no other widening: no eval, no
    // inline script or style.
    assert.match(policy, /script-src 'self' 'wasm-unsafe-eval';/)
    assert.doesNotMatch(policy, /'unsafe-(eval|inline|hashes)'/)
    assert.equal(page.headers.get('cache-control'), 'no-cache')
    const html = await page.text()
    const script = html.match(/src="(\/assets\/[^"]+\.js)"/)?.[1]
    assert.ok(script)
    const asset = await fetch(kiln.url + script, { headers: { 'accept-encoding': 'br' } })
    assert.equal(asset.headers.get('cache-control'), 'public, max-age=31536000, immutable')
    assert.equal(asset.headers.get('content-encoding'), 'br')
    // The compressed copy is the same script (fetch decompresses it).
    const plain = await fetch(kiln.url + script, { headers: { 'accept-encoding': 'identity' } })
    assert.equal(plain.headers.get('content-encoding'), null)
    assert.equal(await asset.text(), await plain.text())
  })
})

// A prompt model end to end: kiln's `openai_images` channel against a tiny
// OpenAI-compatible image API run by the harness (harness.mjs), next to relief, in a
// kiln of its own.
/** @param {string} base */
const PROMPT_CONFIG = (base) => `
[[channels]]
name = "relief"
type = "relief"
models = [{ name = "relief", kind = "image_to_3d" }]

[[channels]]
name = "images"
type = "openai_images"
secret = "sk-test"
options = { base_url = "${base}" }
models = [{ name = "painter", kind = "text_to_image", upstream = "painter-v1" }]
`

describe('a prompt model (text to picture, through an OpenAI-compatible API)', () => {
  /** @type {Awaited<ReturnType<typeof startFakeImageApi>>} */
  let fake
  /** @type {Awaited<ReturnType<typeof startKiln>>} */
  let kiln

  before(async () => {
    fake = await startFakeImageApi({ latency: 1500 })
    kiln = await startKiln({ config: PROMPT_CONFIG(fake.url) })
  })
  after(async () => {
    await kiln?.stop()
    await fake?.stop()
  })

  it('takes a prompt, shows the picture with its download, and lists it with a thumbnail', async () => {
    const { page, context, problems } = await newPage(browser)
    await recordStatuses(context)
    await page.goto(kiln.url)
    // Every model of the catalog, grouped by kind; the picture model first.
    const picker = page.locator('[data-testid="model"]')
    await picker.locator('option[value="text_to_image:painter"]').waitFor({ state: 'attached' })
    assert.equal(await picker.inputValue(), 'image_to_3d:relief')
    assert.equal(await page.locator('optgroup[label="Text → picture"] option').innerText(), 'painter · cloud (default)')
    await page.locator('[data-testid="drop"]').waitFor()
    // Choosing it asks for a prompt instead of a picture, and says the job leaves the machine.
    await picker.selectOption('text_to_image:painter')
    await page.locator('[data-testid="prompt"]').waitFor()
    assert.equal(await page.locator('[data-testid="drop"]').count(), 0)
    const badge = page.locator('[data-testid="cloud-badge"]')
    assert.equal(await page.locator('[data-testid="cloud-tip"]').isVisible(), false)
    await badge.focus()
    await page.locator('[data-testid="cloud-tip"]').waitFor({ state: 'visible' })
    assert.match(await page.locator('[data-testid="cloud-tip"]').innerText(), /leaves this machine.+bill/)
    assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Turn words into a picture')
    await page.locator('[data-testid="prompt"]').fill('a lighthouse at dusk, in watercolour')
    await page.locator('[data-testid="submit"]').click()
    await page.waitForURL(/\/tasks\/[0-9a-f-]+$/)

    // The picture, whole, with its download; no 3D viewer (and no three.js).
    const image = page.locator('[data-testid="image-result"][data-state="loaded"] [data-testid="result-image"]')
    await image.waitFor({ timeout: 60_000 })
    const natural = await image.evaluate((img) => [/** @type {HTMLImageElement} */ (img).naturalWidth, /** @type {HTMLImageElement} */ (img).naturalHeight])
    assert.deepEqual(natural, [640, 480])
    await page.screenshot({ path: join(OUTPUT, 'prompt-picture.png') })
    assert.equal(await page.locator('[data-testid="viewer"]').count(), 0)
    assert.equal(await page.locator('[data-testid="dimensions"]').innerText(), '640×480')
    assert.match(await page.locator('[data-testid="metadata"]').innerText(), /PNG/)
    assert.match(await page.locator('[data-testid="task-prompt"]').innerText(), /a lighthouse at dusk/)
    const download = page.locator('[data-testid="download"]')
    assert.match((await download.getAttribute('download')) ?? '', /^kiln-[0-9a-f]{8}\.png$/)
    const href = (await download.getAttribute('href')) ?? ''
    assert.match(href, /\/files\/images\/.+\.png$/)
    const file = await fetch(new URL(href, kiln.url))
    assert.equal(file.status, 200)
    assert.deepEqual(Buffer.from(await file.arrayBuffer()), fake.picture)
    const states = await seen(page)
    assert.ok(states.some((s) => s.startsWith('running|') || s.startsWith('queued|')), `no progress among ${states}`)

    // kiln asked the API with its key, the prompt and the upstream model.
    const generation = fake.requests.find((r) => r.path.endsWith('/images/generations'))
    assert.ok(generation, JSON.stringify(fake.requests))
    assert.equal(generation.authorization, 'Bearer sk-test')
    assert.equal(generation.body?.prompt, 'a lighthouse at dusk, in watercolour')
    assert.equal(generation.body?.model, 'painter-v1')

    // The history shows the picture it made, as a small thumbnail.
    await page.getByRole('link', { name: 'History' }).click()
    const row = page.locator('[data-testid="history-row"]').first()
    await row.waitFor()
    assert.match(await row.innerText(), /painter · Text → picture/)
    const thumb = row.locator('[data-testid="history-thumb"]')
    await thumb.waitFor()
    await thumb.evaluate(
      (img) =>
        /** @type {HTMLImageElement} */ (img).complete ||
        new Promise((resolve) => img.addEventListener('load', resolve, { once: true })),
    )
    assert.match((await thumb.getAttribute('src')) ?? '', /\/api\/v1\/tasks\/[0-9a-f-]+\/thumbnail$/)
    const width = await thumb.evaluate((img) => /** @type {HTMLImageElement} */ (img).naturalWidth)
    assert.equal(width, 320)
    await row.getByRole('link', { name: 'View picture' }).click()
    await page.locator('[data-testid="result-image"]').waitFor()

    // In Chinese.
    await page.locator('[data-testid="language"]').selectOption('zh-CN')
    await page.locator('[data-testid="download"]', { hasText: '下载 PNG' }).waitFor()
    await page.locator('[data-testid="language"]').selectOption('en')
    assert.deepEqual(problems, [])
    await context.close()
  })
})

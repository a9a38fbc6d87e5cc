// @ts-check
// End-to-end, a 3D result's formats (docs/web.md, "Downloads and AR"): the viewer loads
// the compressed copy (`model.meshopt.glb`: three's meshopt decoder, WebAssembly under
// the page's CSP) and draws what the plain model draws; the pixel difference between the
// two is written to output/compression.json for docs/benchmarks.md. Then the download
// menu prepares a format through `?format=`, the AR button gives an iPhone a USDZ served
// as Quick Look needs it and an Android phone a Scene Viewer intent with an absolute GLB
// URL, and the lists show the task's preview render. One relief task serves every test.
import assert from 'node:assert/strict'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { expectModelDrawn, FIXTURES, launchBrowser, newPage, OUTPUT, postPicture, startKiln } from './harness.mjs'

mkdirSync(OUTPUT, { recursive: true })

const IPHONE =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1'
const PIXEL = 'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36'

/** A channel difference above this (of 255) counts a pixel as different. */
const THRESHOLD = 8

/** @type {Awaited<ReturnType<typeof startKiln>>} */
let kiln
/** @type {import('playwright-core').Browser} */
let browser
/** @type {Promise<string> | null} */
let made = null

before(async () => {
  kiln = await startKiln()
  browser = await launchBrowser()
})
after(async () => {
  await browser?.close()
  await kiln?.stop()
})

/** The relief task every test looks at, made once and waited for. */
function task() {
  made ??= (async () => {
    const { status, body } = await postPicture(kiln.url, join(FIXTURES, 'vase.png'))
    assert.equal(status, 202, JSON.stringify(body))
    // A ceiling against hangs, not a speed check.
    for (let i = 0; i < 600; i++) {
      const view = await (await fetch(`${kiln.url}/api/v1/tasks/${body.id}/status`)).json()
      if (view.status === 'succeeded') return /** @type {string} */ (body.id)
      assert.ok(['queued', 'running'].includes(view.status), JSON.stringify(view))
      await new Promise((r) => setTimeout(r, 200))
    }
    throw new Error(`task ${body.id} did not finish`)
  })()
  return made
}

/**
 * How two screenshots of the viewer differ: the mean absolute difference per channel
 * (of 255), and the share of pixels whose largest channel difference is above THRESHOLD,
 * of the whole canvas and of the pixels the model covers in either (those not the
 * background colour of the corner).
 * @param {import('pngjs').PNG} a @param {import('pngjs').PNG} b
 */
function difference(a, b) {
  assert.equal(a.width, b.width)
  assert.equal(a.height, b.height)
  const sums = [0, 0, 0]
  let differing = 0
  let model = 0
  let modelDiffering = 0
  const background = [0, 1, 2].map((c) => a.data[(a.width * 8 + 8) * 4 + c] ?? 0)
  const isBackground = (/** @type {Buffer} */ data, /** @type {number} */ at) =>
    [0, 1, 2].every((c) => Math.abs((data[at + c] ?? 0) - (background[c] ?? 0)) <= 2)
  const pixels = a.width * a.height
  for (let i = 0; i < pixels; i++) {
    const at = i * 4
    let largest = 0
    for (let c = 0; c < 3; c++) {
      const d = Math.abs((a.data[at + c] ?? 0) - (b.data[at + c] ?? 0))
      sums[c] = (sums[c] ?? 0) + d
      largest = Math.max(largest, d)
    }
    if (largest > THRESHOLD) differing++
    if (!isBackground(a.data, at) || !isBackground(b.data, at)) {
      model++
      if (largest > THRESHOLD) modelDiffering++
    }
  }
  const round = (/** @type {number} */ x, digits = 3) => Number(x.toFixed(digits))
  return {
    mean_abs_diff: sums.map((s) => round(s / pixels)),
    pixels_differing_pct: round((100 * differing) / pixels, 2),
    model_pixels: model,
    model_pixels_differing_pct: round(model ? (100 * modelDiffering) / model : 0, 2),
  }
}

describe('a 3D result’s formats in the page', () => {
  it('shows the compressed copy, which looks like the plain model', async () => {
    const id = await task()
    const result = await (await fetch(`${kiln.url}/api/v1/tasks/${id}/result`)).json()
    const plain = result.outputs.find((/** @type {any} */ o) => o.role === 'model')
    const compressed = result.outputs.find((/** @type {any} */ o) => o.metadata?.format === 'glb-meshopt')
    assert.ok(compressed, `no compressed copy among ${JSON.stringify(result.outputs.map((/** @type {any} */ o) => o.name))}`)
    assert.equal(compressed.role, 'variant')

    /** @type {Record<string, import('pngjs').PNG>} */
    const shots = {}
    // The plain model is shown by hiding the copy from the page (the server's answer,
    // edited in the browser). E2E_RENDER_NOISE=1 draws it twice, to measure how much two
    // renders of one model differ (nothing, with SwiftShader: 2026-12-01), which the
    // suite's time does not pay for every run.
    const modes = ['compressed', 'plain', ...(process.env.E2E_RENDER_NOISE ? ['plain-again'] : [])]
    for (const mode of modes) {
      const { page, context, problems } = await newPage(browser, { width: 900, height: 900 })
      /** @type {string[]} */
      const models = []
      page.on('request', (request) => {
        if (/\/files\/.+\.glb$/.test(request.url())) models.push(request.url().split('/').pop() ?? '')
      })
      if (mode !== 'compressed') {
        await page.route(`**/api/v1/tasks/${id}/result`, async (route) => {
          const response = await route.fetch()
          const body = await response.json()
          body.outputs = body.outputs.filter((/** @type {any} */ o) => o.metadata?.format !== 'glb-meshopt')
          await route.fulfill({ response, json: body })
        })
      }
      await page.goto(`${kiln.url}/tasks/${id}`)
      shots[mode] = await expectModelDrawn(page, `formats-${mode}`)
      assert.deepEqual(models, [mode === 'compressed' ? 'model.meshopt.glb' : 'model.glb'], mode)
      // The download stays the original.
      assert.match((await page.locator('[data-testid="download"]').getAttribute('href')) ?? '', /\/model\.glb$/)
      // No CSP report (WebAssembly compiled), no decoder error.
      assert.deepEqual(problems, [], mode)
      await context.close()
    }
    const measured = {
      model: 'vase.png, relief defaults',
      plain_bytes: plain.size,
      compressed_bytes: compressed.size,
      ratio: Number((compressed.size / plain.size).toFixed(3)),
      canvas: `${shots.compressed?.width}×${shots.compressed?.height}`,
      threshold: THRESHOLD,
      compressed_vs_plain: difference(/** @type {any} */ (shots.plain), /** @type {any} */ (shots.compressed)),
      plain_vs_plain: shots['plain-again'] ? difference(/** @type {any} */ (shots.plain), /** @type {any} */ (shots['plain-again'])) : null,
    }
    writeFileSync(join(OUTPUT, 'compression.json'), `${JSON.stringify(measured, null, 2)}\n`)
    console.log(`compression: ${JSON.stringify(measured)}`)
    // Only what a broken load would break: a model missing, moved or mis-scaled differs
    // by tens of levels on average; the real difference is reported, not held to.
    const worst = Math.max(...measured.compressed_vs_plain.mean_abs_diff)
    assert.ok(worst < 6, `the compressed model looks unlike the plain one: ${JSON.stringify(measured)}`)
  })

  it('prepares a format from the download menu, and shows the preview in the lists', async () => {
    const id = await task()
    const { page, context, problems } = await newPage(browser)
    await page.goto(`${kiln.url}/tasks/${id}`)
    const row = (/** @type {string} */ format) => page.locator(`[data-testid="download-row"][data-format="${format}"]`)
    await row('glb').locator('a').waitFor()
    assert.equal(await row('glb').locator('a').getAttribute('download'), `${id}-model.glb`)
    assert.match(await row('glb').innerText(), /GLB \(original\)\s+[\d.]+ (KB|MB)/)
    assert.match(await row('glb-meshopt').innerText(), /GLB compressed \(meshopt\)\s+[\d.]+ (KB|MB)/)
    // STL is made on request.
    assert.equal(await row('stl').getAttribute('data-row'), 'available')
    await row('stl').locator('[data-testid="prepare"]').click()
    const link = row('stl').locator('a')
    await link.waitFor({ timeout: 60_000 })
    assert.equal(await link.getAttribute('download'), `${id}-model.stl`)
    assert.match(await row('stl').innerText(), /STL \(m\)\s+[\d.]+ (KB|MB)/)
    const stl = await fetch(new URL((await link.getAttribute('href')) ?? '', kiln.url))
    assert.equal(stl.status, 200)
    assert.equal(stl.headers.get('content-type'), 'model/stl')
    // No AR on a desktop.
    assert.equal(await page.locator('[data-testid="ar"]').count(), 0)

    // The history shows the preview render, not the picture the model was made from.
    await page.getByRole('link', { name: 'History' }).click()
    const thumb = page.locator('[data-testid="history-row"]').first().locator('[data-testid="history-thumb"]')
    await thumb.waitFor()
    assert.equal(await thumb.getAttribute('src'), `/api/v1/tasks/${id}/thumbnail`)
    const loaded = (/** @type {import('playwright-core').Locator} */ img) =>
      img.evaluate(
        (element) =>
          new Promise((resolve) => {
            const img = /** @type {HTMLImageElement} */ (element)
            if (img.complete) resolve(img.naturalWidth)
            else img.addEventListener('load', () => resolve(img.naturalWidth), { once: true })
          }),
      )
    assert.ok(Number(await loaded(thumb)) > 0)
    // So does the library, beside the task.
    await page.getByRole('link', { name: 'Library' }).click()
    const preview = page.locator('[data-testid="task-preview"]').first()
    await preview.waitFor()
    assert.ok(Number(await loaded(preview)) > 0)
    assert.deepEqual(problems, [])
    await context.close()
  })

  it('gives an iPhone the USDZ for AR Quick Look, prepared before the tap', async () => {
    const id = await task()
    const { page, context, problems } = await newPage(browser, { width: 390, height: 844, isMobile: true, userAgent: IPHONE })
    // Chromium has no Quick Look: say yes to the feature test, as Safari does.
    await context.addInitScript(() => {
      const supports = DOMTokenList.prototype.supports
      DOMTokenList.prototype.supports = function (/** @type {string} */ token) {
        return token === 'ar' || supports.call(this, token)
      }
    })
    await page.goto(`${kiln.url}/tasks/${id}`)
    const link = page.locator('a[rel="ar"]')
    await link.waitFor({ timeout: 60_000 })
    // Its only child is the picture, as Quick Look requires.
    assert.deepEqual(await link.evaluate((a) => [...a.children].map((c) => c.tagName)), ['IMG'])
    const usdz = await fetch(new URL((await link.getAttribute('href')) ?? '', kiln.url))
    assert.equal(usdz.status, 200)
    assert.equal(usdz.headers.get('content-type'), 'model/vnd.usdz+zip')
    assert.equal(Buffer.from(await usdz.arrayBuffer()).subarray(0, 2).toString(), 'PK')
    assert.equal(await page.locator('[data-testid="download-row"][data-format="usdz"]').getAttribute('data-row'), 'ready')
    assert.deepEqual(problems, [])
    await context.close()
  })

  it('gives an Android phone a Scene Viewer intent with the GLB’s absolute URL', async () => {
    const id = await task()
    const { page, context, problems } = await newPage(browser, { width: 412, height: 915, isMobile: true, userAgent: PIXEL })
    await page.goto(`${kiln.url}/tasks/${id}`)
    const link = page.locator('[data-testid="ar-scene-viewer"]')
    await link.waitFor()
    const href = (await link.getAttribute('href')) ?? ''
    const intent = href.match(
      /^intent:\/\/arvr\.google\.com\/scene-viewer\/1\.2\?mode=ar_preferred&title=([^&#]+)&file=([^&#]+)#Intent;scheme=https;package=com\.google\.android\.googlequicksearchbox;action=android\.intent\.action\.VIEW;S\.browser_fallback_url=([^;]+);end;$/,
    )
    assert.ok(intent, href)
    const file = decodeURIComponent(intent[2] ?? '')
    assert.match(file, new RegExp(`^${kiln.url}/files/reconstruction/${id}/model(\\.core)?\\.glb$`))
    assert.equal(decodeURIComponent(intent[3] ?? ''), `${kiln.url}/tasks/${id}#no-ar`)
    const glb = await fetch(file)
    assert.equal(glb.status, 200)
    assert.equal(Buffer.from(await glb.arrayBuffer()).subarray(0, 4).toString(), 'glTF')
    // Back from the fallback (no Google app): the page says AR is not there.
    await page.goto(`${kiln.url}/tasks/${id}#no-ar`)
    await page.locator('[data-testid="ar-none"]').waitFor()
    assert.deepEqual(problems, [])
    await context.close()
  })
})

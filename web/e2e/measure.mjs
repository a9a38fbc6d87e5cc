// @ts-check
// Measures what docs/benchmarks.md records for the web page: the production bundle's
// sizes (as sent: gzip and brotli) and the first load over loopback in Chromium, read
// from the browser's Navigation Timing and Paint Timing, cold cache each time.
// `scripts/web.sh measure` runs it after a build; it prints Markdown.
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { brotliCompressSync, gzipSync } from 'node:zlib'
import { FIXTURES, REPO, launchBrowser, newPage, postPicture, startKiln } from './harness.mjs'

const DIST = join(REPO, 'web', 'dist')
const RUNS = 7

const kb = (/** @type {number} */ n) => `${(n / 1024).toFixed(1)} KiB`
/** @param {string[]} files */
function sizes(files) {
  let raw = 0
  let gz = 0
  let br = 0
  for (const file of files) {
    const bytes = readFileSync(join(DIST, file))
    raw += bytes.length
    gz += gzipSync(bytes, { level: 9 }).length
    br += brotliCompressSync(bytes).length
  }
  return { raw, gz, br }
}

const html = readFileSync(join(DIST, 'index.html'), 'utf8')
const initialJs = [...html.matchAll(/(?:src|href)="\/(assets\/[^"]+\.js)"/g)].map((m) => m[1] ?? '')
const initialCss = [...html.matchAll(/href="\/(assets\/[^"]+\.css)"/g)].map((m) => m[1] ?? '')
const assets = readdirSync(join(DIST, 'assets')).filter((f) => /\.(js|css)$/.test(f))
const three = assets.filter((f) => f.startsWith('scene-')).map((f) => `assets/${f}`)
const rest = assets.map((f) => `assets/${f}`).filter((f) => ![...initialJs, ...initialCss, ...three].includes(f))

/** @type {[string, { raw: number, gz: number, br: number }][]} */
const rows = [
  ['initial JS (Vue, router, create page)', sizes(initialJs)],
  ['initial CSS', sizes(initialCss)],
  ['index.html', sizes(['index.html'])],
  ['three.js viewer chunk (loaded on the task page only when a model is shown)', sizes(three)],
  [`other lazy chunks (${rest.length}: task, library, history pages…)`, sizes(rest)],
]
console.log('| part | raw | gzip | brotli |\n| --- | --- | --- | --- |')
for (const [name, s] of rows) console.log(`| ${name} | ${kb(s.raw)} | ${kb(s.gz)} | ${kb(s.br)} |`)

const median = (/** @type {number[]} */ xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN
const kiln = await startKiln()
const browser = await launchBrowser()
try {
  const { body: task } = await postPicture(kiln.url, join(FIXTURES, 'vase.png'))
  // Wait for the model, so the viewer measurement is of a finished task.
  for (let i = 0; i < 100; i++) {
    const status = await (await fetch(`${kiln.url}/api/v1/tasks/${task.id}/status`)).json()
    if (status.status === 'succeeded') break
    await new Promise((r) => setTimeout(r, 200))
  }
  /** @type {Record<string, number[]>} */
  const results = { ttfb: [], dcl: [], load: [], fcp: [], transferred: [], viewer: [] }
  for (let run = 0; run < RUNS; run++) {
    const { page, context } = await newPage(browser)
    await page.goto(kiln.url, { waitUntil: 'load' })
    await page.getByRole('heading', { level: 1 }).waitFor()
    const timing = await page.evaluate(() => {
      const nav = /** @type {PerformanceNavigationTiming} */ (performance.getEntriesByType('navigation')[0])
      const fcp = performance.getEntriesByName('first-contentful-paint')[0]
      const resources = /** @type {PerformanceResourceTiming[]} */ (performance.getEntriesByType('resource'))
      return {
        ttfb: nav.responseStart,
        dcl: nav.domContentLoadedEventEnd,
        load: nav.loadEventEnd,
        fcp: fcp ? fcp.startTime : NaN,
        transferred: nav.transferSize + resources.reduce((sum, r) => sum + r.transferSize, 0),
      }
    })
    for (const [k, v] of Object.entries(timing)) results[k]?.push(v)
    // A deep link to a finished task: from navigation start to the model on screen
    // (page, three.js chunk, GLB download and parse, first frame).
    await page.goto(`${kiln.url}/tasks/${task.id}`)
    await page.locator('[data-testid="viewer"][data-state="loaded"]').waitFor({ timeout: 60_000 })
    results.viewer?.push(await page.evaluate(() => performance.now()))
    await context.close()
  }
  const ms = (/** @type {number[]} */ xs) => `${median(xs).toFixed(0)} ms`
  console.log(`\nFirst load of \`/\` over loopback, cold cache, median of ${RUNS} runs (Chromium ${browser.version()}, headless, SwiftShader):\n`)
  console.log('| measure | value |\n| --- | --- |')
  console.log(`| time to first byte (\`responseStart\`) | ${ms(results.ttfb ?? [])} |`)
  console.log(`| first contentful paint | ${ms(results.fcp ?? [])} |`)
  console.log(`| \`DOMContentLoaded\` done | ${ms(results.dcl ?? [])} |`)
  console.log(`| \`load\` done | ${ms(results.load ?? [])} |`)
  console.log(`| bytes transferred (page, scripts, styles, API calls) | ${kb(median(results.transferred ?? []))} |`)
  console.log(`| \`/tasks/{id}\` of a finished task: navigation to model drawn | ${ms(results.viewer ?? [])} |`)
} finally {
  await browser.close()
  await kiln.stop()
}

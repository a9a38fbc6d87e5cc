// @ts-check
// Takes the screenshots in docs/screenshots: every screen, at desktop and phone width, in
// Chinese (the users' language) and the create and viewer screens in English too. A
// picture model (an `openai_images` channel against the harness's small image API) is
// there for the prompt and the picture a task made.
// `make screenshots` runs it; it needs the kiln binary and fonts-noto-cjk.
import { mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { FIXTURES, REPO, launchBrowser, newPage, postPicture, startFakeImageApi, startKiln } from './harness.mjs'

const OUT = join(REPO, 'docs', 'screenshots')
mkdirSync(OUT, { recursive: true })

// One run at a time and slow options, so the queue and the progress can be caught.
const images = await startFakeImageApi({
  latency: 800,
  picture: readFileSync(join(FIXTURES, 'mug.jpg')),
  contentType: 'image/jpeg',
})
const CONFIG = `
[[channels]]
name = "relief"
type = "relief"
max_concurrency = 1
max_queue = 10
[[channels.models]]
name = "relief"
kind = "image_to_3d"
[channels.options]
resolution = 512
texture_size = 4096
max_triangles = 400000

[[channels]]
name = "images"
type = "openai_images"
secret = "sk-test"
options = { base_url = "${images.url}" }
models = [{ name = "painter", kind = "text_to_image", upstream = "painter-v1", description = "OpenAI-compatible image API" }]
`

const kiln = await startKiln({ config: CONFIG })
const browser = await launchBrowser()
const sizes = {
  desktop: { width: 1280, height: 800 },
  phone: { width: 360, height: 740, isMobile: true },
}

try {
  // Something in the library and the history first.
  for (const name of ['mug.jpg', 'toy.webp']) await postPicture(kiln.url, join(FIXTURES, name))

  for (const [lang, screens] of /** @type {const} */ ([
    ['zh-CN', ['create', 'preview', 'queued', 'progress', 'viewer', 'prompt', 'picture', 'library', 'history']],
    ['en', ['create', 'viewer']],
  ])) {
    for (const [device, size] of Object.entries(sizes)) {
      const { page, context, problems } = await newPage(browser, { ...size, locale: lang })
      /** @param {string} screen */
      const shot = async (screen) => {
        if (!(/** @type {readonly string[]} */ (screens)).includes(screen)) return
        await page.waitForTimeout(250)
        const path = join(OUT, `${screen}-${device}${lang === 'en' ? '-en' : ''}.png`)
        await page.screenshot({ path, fullPage: device === 'phone' && ['library', 'history'].includes(screen) })
        console.log(path)
      }
      await page.goto(kiln.url)
      await page.locator('[data-testid="model"] option').first().waitFor({ state: 'attached' })
      await shot('create')
      await page.locator('[data-testid="file"]').setInputFiles(join(FIXTURES, 'vase.png'))
      await page.locator('[data-testid="preview"]').waitFor()
      await shot('preview')
      for (let i = 0; i < 2; i++) await postPicture(kiln.url, join(FIXTURES, 'large-4096x3072.jpg'))
      await page.locator('[data-testid="submit"]').click()
      await page.locator('[data-testid="progress-card"][data-status="queued"]').waitFor()
      await page.waitForTimeout(600)
      await shot('queued')
      await page.locator('[data-testid="progress-card"][data-status="running"]').waitFor({ timeout: 60_000 })
      await page.waitForFunction(() => {
        const bar = document.querySelector('[data-testid="progress"]')
        return Number(bar?.getAttribute('aria-valuenow') ?? 0) >= 20
      }, undefined, { timeout: 30_000, polling: 50 }).catch(() => undefined)
      await shot('progress')
      await page.locator('[data-testid="viewer"][data-state="loaded"]').waitFor({ timeout: 60_000 })
      await page.waitForTimeout(600)
      await shot('viewer')
      if (lang === 'en') {
        await context.close()
        continue
      }
      await page.goto(kiln.url)
      await page.locator('[data-testid="model"] option[value="text_to_image:painter"]').waitFor({ state: 'attached' })
      await page.locator('[data-testid="model"]').selectOption('text_to_image:painter')
      await page.locator('[data-testid="prompt"]').fill('一只红色的陶瓷马克杯，白色背景')
      await page.locator('[data-testid="cloud-badge"]').focus()
      await shot('prompt')
      await page.locator('[data-testid="submit"]').click()
      await page.locator('[data-testid="image-result"][data-state="loaded"]').waitFor({ timeout: 60_000 })
      await shot('picture')
      await page.goto(`${kiln.url}/library`)
      await page.locator('[data-testid="picture"] img').first().waitFor()
      // The thumbnails load lazily: bring each into view once for the full-page shot.
      for (const img of await page.locator('[data-testid="picture"] img').all()) await img.scrollIntoViewIfNeeded()
      await page.waitForFunction(() =>
        [...document.querySelectorAll('[data-testid="picture"] img')].every((i) => /** @type {HTMLImageElement} */ (i).complete && /** @type {HTMLImageElement} */ (i).naturalWidth > 0),
      )
      await page.evaluate(() => window.scrollTo(0, 0))
      await shot('library')
      await page.goto(`${kiln.url}/history`)
      await page.locator('[data-testid="history-row"]').first().waitFor()
      await shot('history')
      if (problems.length) throw new Error(problems.join('\n'))
      await context.close()
    }
  }
} finally {
  await browser.close()
  await kiln.stop()
  await images.stop()
}

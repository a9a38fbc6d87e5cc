// @ts-check
// Shared by the end-to-end tests, the screenshots and the measurements: starts the real
// `kiln` binary on a free port with a fresh data directory, and Debian's Chromium
// through playwright-core (no browser is ever downloaded).
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer as createHttpServer } from 'node:http'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { PNG } from 'pngjs'

const here = dirname(fileURLToPath(import.meta.url))
/** The repository root (web/ is one level down). */
export const REPO = resolve(here, '..', '..')
/** The fixtures shared by every part of kiln: ../shared/fixtures/images from the repository. */
export const FIXTURES = resolve(REPO, '../shared/fixtures/images')

/** The binary: $E2E_KILN_BIN (not KILN_…: kiln reads those as configuration), else the debug build in the target dir (make test builds it just before), else the release build. */
export function kilnBinary() {
  if (process.env.E2E_KILN_BIN) return process.env.E2E_KILN_BIN
  const target = process.env.CARGO_TARGET_DIR ? resolve(REPO, process.env.CARGO_TARGET_DIR) : join(REPO, 'target')
  for (const profile of ['debug', 'release']) {
    const path = join(target, profile, 'kiln')
    if (existsSync(path)) return path
  }
  throw new Error(`no kiln binary under ${target}: run cargo build first, or set E2E_KILN_BIN`)
}

/** A port nobody listens on right now. */
async function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address ? address.port : 0
      server.close(() => resolvePort(port))
    })
  })
}

/**
 * Starts kiln. `config` is the text of a kiln.toml (optional); `env`, more variables
 * (such as `KILN_ADMIN__USERNAME` and `KILN_ADMIN__PASSWORD` for the first admin).
 * @param {{ config?: string, env?: Record<string, string> }} [options]
 */
export async function startKiln(options = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-e2e-'))
  /** @type {Record<string, string | undefined>} */
  const env = { ...process.env, KILN_LOG: process.env.KILN_LOG ?? 'warn', ...options.env }
  if (options.config) {
    const path = join(dir, 'kiln.toml')
    writeFileSync(path, options.config)
    env.KILN_CONFIG = path
  }
  /** @param {number} port */
  const launch = async (port) => {
    const child = spawn(kilnBinary(), ['serve', '--bind', `127.0.0.1:${port}`, '--data-dir', join(dir, 'data')], {
      env,
      // kiln writes ./logs under its working directory: keep it in the temporary one.
      cwd: dir,
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let stderr = ''
    child.stderr?.on('data', (chunk) => (stderr += chunk))
    const deadline = Date.now() + 30_000
    while (Date.now() < deadline && child.exitCode === null) {
      try {
        if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) return { child, stderr: '' }
      } catch {
        // Not listening yet.
      }
      await new Promise((r) => setTimeout(r, 100))
    }
    child.kill('SIGKILL')
    return { child: null, stderr }
  }
  /** @param {import('node:child_process').ChildProcess} child */
  const stop = async (child) => {
    child.kill('SIGTERM')
    await new Promise((done) => (child.exitCode !== null ? done(null) : child.once('exit', done)))
  }
  // Tries a few ports: another process may take the free one before kiln binds it.
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort()
    let { child, stderr } = await launch(port)
    if (!child) {
      if (!/address already in use|cannot listen/i.test(stderr)) throw new Error(`kiln did not start:\n${stderr}`)
      continue
    }
    let running = child
    return {
      url: `http://127.0.0.1:${port}`,
      dir,
      /** Stops kiln as a signal would, and starts it again on the same port and data. */
      async restart() {
        await stop(running)
        const again = await launch(port)
        if (!again.child) throw new Error(`kiln did not start again:\n${again.stderr}`)
        running = again.child
      },
      async stop() {
        await stop(running)
        rmSync(dir, { recursive: true, force: true })
      },
    }
  }
  throw new Error('kiln found no free port')
}

/** Chromium flags: software WebGL (SwiftShader) and nothing that reaches the network. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--use-angle=swiftshader',
  '--enable-unsafe-swiftshader',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
]

export function chromiumPath() {
  const path = process.env.CHROMIUM ?? '/usr/bin/chromium'
  if (!existsSync(path)) throw new Error(`${path} is missing: make test installs Debian's chromium package`)
  return path
}

/** Debian's Chromium; playwright gives each launch a fresh, temporary user-data-dir. */
export async function launchBrowser() {
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS })
}

/**
 * A page that fails the test on any script error or CSP violation.
 * @param {import('playwright-core').Browser} browser
 * @param {{ width?: number, height?: number, locale?: string, isMobile?: boolean, userAgent?: string }} [options]
 */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({
    viewport: { width: options.width ?? 1280, height: options.height ?? 860 },
    locale: options.locale ?? 'en-US',
    isMobile: options.isMobile ?? false,
    hasTouch: options.isMobile ?? false,
    deviceScaleFactor: 1,
    ...(options.userAgent ? { userAgent: options.userAgent } : {}),
  })
  // Generous: the machine may be busy with builds while the tests run.
  context.setDefaultTimeout(60_000)
  const page = await context.newPage()
  /** @type {string[]} */
  const problems = []
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`))
  page.on('console', (message) => {
    const text = message.text()
    if (message.type() === 'error' && !/Failed to load resource/.test(text)) problems.push(`console: ${text}`)
    if (/Content Security Policy/i.test(text)) problems.push(`CSP: ${text}`)
  })
  return { page, context, problems }
}

/** Where the tests leave their screenshots and measurements (not committed). */
export const OUTPUT = join(here, 'output')

/**
 * The mean colour of a square of `png` around (x, y).
 * @param {PNG} png @param {number} x @param {number} y @param {number} half
 */
function mean(png, x, y, half) {
  const sum = [0, 0, 0]
  let n = 0
  for (let j = y - half; j <= y + half; j++)
    for (let i = x - half; i <= x + half; i++) {
      const at = (png.width * j + i) * 4
      for (let c = 0; c < 3; c++) sum[c] = (sum[c] ?? 0) + (png.data[at + c] ?? 0)
      n++
    }
  return sum.map((s) => s / n)
}

/**
 * Waits for the viewer to say the model is loaded, then checks that the canvas shows
 * something other than the background at its centre; the screenshot is kept in OUTPUT
 * as `name`.png and returned.
 * @param {import('playwright-core').Page} page @param {string} name
 * @param {number} [within] a ceiling against hangs, not a speed check: the polling test
 *   waits behind eight relief tasks, which a debug build on two busy cores makes slowly
 */
export async function expectModelDrawn(page, name, within = 60_000) {
  await page.locator('[data-testid="viewer"][data-state="loaded"]').waitFor({ timeout: within })
  // A few frames for the first render after framing.
  await page.waitForTimeout(500)
  const canvas = page.locator('[data-testid="viewer-canvas"]')
  const shot = PNG.sync.read(await canvas.screenshot({ path: join(OUTPUT, `${name}.png`) }))
  const centre = mean(shot, Math.floor(shot.width / 2), Math.floor(shot.height / 2), 6)
  const corner = mean(shot, 8, 8, 4)
  const difference = Math.max(...centre.map((v, i) => Math.abs(v - (corner[i] ?? 0))))
  assert.ok(difference > 25, `the canvas centre ${centre} looks like the background ${corner}`)
  return shot
}

/**
 * Submits a task straight to the API (to fill the queue, or to compare messages).
 * @param {string} url
 * @param {string} file
 * @param {Record<string, string>} [fields]
 */
export async function postPicture(url, file, fields = {}) {
  const { readFileSync } = await import('node:fs')
  const form = new FormData()
  form.append('image', new Blob([readFileSync(file)]), file.split('/').pop())
  for (const [k, v] of Object.entries(fields)) form.append(k, v)
  const response = await fetch(`${url}/api/v1/tasks`, { method: 'POST', body: form })
  return { status: response.status, body: await response.json() }
}

/**
 * A small PNG: a gradient, `width` × `height`.
 * @param {number} width @param {number} height
 */
export async function gradientPng(width, height) {
  const png = new PNG({ width, height })
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const at = (width * y + x) * 4
      png.data[at] = Math.round((x * 255) / width)
      png.data[at + 1] = Math.round((y * 255) / height)
      png.data[at + 2] = 160
      png.data[at + 3] = 255
    }
  return PNG.sync.write(png)
}

/**
 * A tiny OpenAI-compatible image API in this process, for kiln's `openai_images`
 * channel: `POST …/images/generations` answers `{"created", "data": [{"b64_json", "url"}]}`
 * with one picture (`picture`, else a 640 × 480 PNG) after `latency` ms, `GET …/models`
 * lists one model (the channel's health probe), and the URL serves the same picture
 * without a key. Paths are matched by their end, so the channel's `base_url` may or may
 * not end in `/v1`. Every request is kept in `requests` (method, path, authorization,
 * JSON body).
 * @param {{ key?: string, latency?: number, picture?: Buffer, contentType?: string }} [options]
 */
export async function startFakeImageApi(options = {}) {
  const key = options.key ?? 'sk-test'
  const latency = options.latency ?? 1500
  const picture = options.picture ?? (await gradientPng(640, 480))
  const contentType = options.contentType ?? 'image/png'
  /** @type {{ method: string, path: string, authorization: string | undefined, body: any }[]} */
  const requests = []
  const server = createHttpServer((request, response) => {
    let raw = ''
    request.on('data', (chunk) => (raw += chunk))
    request.on('end', () => {
      const path = new URL(request.url ?? '/', 'http://fake').pathname
      let body = null
      try {
        body = raw ? JSON.parse(raw) : null
      } catch {
        body = raw
      }
      requests.push({ method: request.method ?? '', path, authorization: request.headers.authorization, body })
      /** @param {number} status @param {unknown} value */
      const json = (status, value) => {
        response.writeHead(status, { 'Content-Type': 'application/json' })
        response.end(JSON.stringify(value))
      }
      if (path.startsWith('/dl/')) {
        response.writeHead(200, { 'Content-Type': contentType, 'Content-Length': picture.length })
        response.end(picture)
        return
      }
      if (request.headers.authorization !== `Bearer ${key}`) {
        json(401, { error: { message: 'Incorrect API key provided.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } })
        return
      }
      if (request.method === 'GET' && path.endsWith('/models')) {
        json(200, { object: 'list', data: [{ id: 'painter-v1', object: 'model', owned_by: 'kiln-e2e' }] })
        return
      }
      if (request.method === 'POST' && path.endsWith('/images/generations')) {
        const address = /** @type {import('node:net').AddressInfo} */ (server.address())
        setTimeout(
          () =>
            json(200, {
              created: Math.floor(Date.now() / 1000),
              data: [{ b64_json: picture.toString('base64'), url: `http://127.0.0.1:${address.port}/dl/image.png`, revised_prompt: body?.prompt ?? '' }],
            }),
          latency,
        )
        return
      }
      json(404, { error: { message: `Unknown path ${path}`, type: 'invalid_request_error', param: null, code: null } })
    })
  })
  await new Promise((listening) => server.listen(0, '127.0.0.1', () => listening(null)))
  const address = /** @type {import('node:net').AddressInfo} */ (server.address())
  return {
    url: `http://127.0.0.1:${address.port}`,
    requests,
    picture,
    stop: () => new Promise((closed) => server.close(() => closed(null))),
  }
}

/**
 * A fake ModelScope API-Inference in this process, after
 * ../shared/reference/provider-apis.md §2 and the Rust fake (tests/common/fakes/modelscope.rs):
 * `GET /v1/models` lists `models` (kiln's test connection and health probe);
 * `POST /v1/images/generations`, only with `X-ModelScope-Async-Mode: true` (else 400 with
 * ModelScope's refusal), answers `{task_id, request_id}`; `GET /v1/tasks/{id}`, only with
 * `X-ModelScope-Task-Type: image_generation`, answers `PENDING` for `pendingFor` ms, then
 * `{task_status: "SUCCEED", output_images: [url]}`; the URL (`/dl/{id}.png`) serves a PNG
 * without a key. Every API call needs `Authorization: Bearer {key}` (else 401). Errors are
 * `{"errors": {"message"}, "request_id"}`. Every request is kept in `requests`.
 * @param {{ key?: string, models?: string[], pendingFor?: number, picture?: Buffer }} [options]
 */
export async function startFakeModelScope(options = {}) {
  const key = options.key ?? 'ms-00000000-0000-4000-8000-00000000fa4e'
  const models = options.models ?? ['Qwen/Qwen-Image', 'Tongyi-MAI/Z-Image-Turbo']
  const pendingFor = options.pendingFor ?? 300
  const picture = options.picture ?? (await gradientPng(512, 512))
  /** @type {Map<string, { model: string, prompt: string, at: number }>} */
  const tasks = new Map()
  /** @type {{ method: string, path: string, headers: import('node:http').IncomingHttpHeaders, body: any }[]} */
  const requests = []
  let next = 0
  const server = createHttpServer((request, response) => {
    let raw = ''
    request.on('data', (chunk) => (raw += chunk))
    request.on('end', () => {
      const path = new URL(request.url ?? '/', 'http://fake').pathname
      let body = null
      try {
        body = raw ? JSON.parse(raw) : null
      } catch {
        body = raw
      }
      requests.push({ method: request.method ?? '', path, headers: request.headers, body })
      /** @param {number} status @param {unknown} value */
      const json = (status, value) => {
        response.writeHead(status, { 'Content-Type': 'application/json' })
        response.end(JSON.stringify(value))
      }
      /** @param {number} status @param {string} message */
      const error = (status, message) => json(status, { errors: { message }, request_id: `req-${++next}` })
      const header = (/** @type {string} */ name) => String(request.headers[name] ?? '').trim()
      if (request.method === 'GET' && path.startsWith('/dl/')) {
        const task = tasks.get(path.slice('/dl/'.length).replace(/\.png$/, ''))
        if (!task) return error(404, 'The specified key does not exist.')
        response.writeHead(200, { 'Content-Type': 'image/png', 'Content-Length': picture.length })
        response.end(picture)
        return
      }
      if (request.headers.authorization !== `Bearer ${key}`) return error(401, 'Authentication failed: missing or invalid access token.')
      if (request.method === 'GET' && path === '/v1/models') {
        return json(200, { object: 'list', data: models.map((id) => ({ id, object: 'model', owned_by: 'modelscope' })) })
      }
      if (request.method === 'POST' && path === '/v1/images/generations') {
        if (header('x-modelscope-async-mode').toLowerCase() !== 'true') {
          return error(
            400,
            'image-gen task currently does not support synchronous calls. Please refer to the documentation and set header X-ModelScope-Async-Mode=true to switch to asynchronous calling mode',
          )
        }
        if (!body || typeof body !== 'object') return error(400, 'The request body must be a JSON object.')
        if (!models.includes(body.model)) return error(400, `Invalid model id: ${body.model} is not supported for image generation.`)
        if (typeof body.prompt !== 'string' || !body.prompt.trim()) return error(400, 'prompt is required.')
        const id = `ms-task-${++next}`
        tasks.set(id, { model: body.model, prompt: body.prompt, at: Date.now() })
        return json(200, { task_id: id, request_id: `req-${++next}` })
      }
      if (request.method === 'GET' && path.startsWith('/v1/tasks/')) {
        if (header('x-modelscope-task-type') !== 'image_generation') {
          return error(400, 'Missing or invalid header X-ModelScope-Task-Type: set it to image_generation.')
        }
        const id = path.slice('/v1/tasks/'.length)
        const task = tasks.get(id)
        if (!task) return error(404, `Task ${id} not found.`)
        if (Date.now() - task.at < pendingFor) return json(200, { task_id: id, task_status: 'PENDING', request_id: `req-${++next}` })
        const address = /** @type {import('node:net').AddressInfo} */ (server.address())
        return json(200, {
          task_id: id,
          task_status: 'SUCCEED',
          output_images: [`http://127.0.0.1:${address.port}/dl/${id}.png`],
          request_id: `req-${++next}`,
        })
      }
      error(404, `Not Found: ${request.method} ${path}`)
    })
  })
  await new Promise((listening) => server.listen(0, '127.0.0.1', () => listening(null)))
  const address = /** @type {import('node:net').AddressInfo} */ (server.address())
  return {
    url: `http://127.0.0.1:${address.port}`,
    key,
    requests,
    picture,
    /** The jobs made, in order. */
    tasks: () => [...tasks.values()],
    stop: () => new Promise((closed) => server.close(() => closed(null))),
  }
}

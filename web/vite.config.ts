// Vite builds the page into dist/, which build.rs embeds into the kiln binary.
// Hashed file names under assets/ let the server cache them for a year; the .br and
// .gz siblings written below let it send them compressed without compressing per request.
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { brotliCompressSync, constants, gzipSync } from 'node:zlib'
import vue from '@vitejs/plugin-vue'
import type { Plugin } from 'vite'
import { defineConfig } from 'vitest/config'

/**
 * Writes `name.br` and `name.gz` next to every text file over 1 KiB, once the bundle is on
 * disk: earlier hooks still see placeholders (such as the preload list) that Vite fills
 * in last, and a compressed copy of those would differ from the file it stands for.
 */
function precompress(): Plugin {
  return {
    name: 'kiln-precompress',
    apply: 'build',
    writeBundle(options, bundle) {
      const dir = options.dir ?? 'dist'
      for (const name of Object.keys(bundle)) {
        if (!/\.(js|css|html|svg|json)$/.test(name)) continue
        const path = join(dir, name)
        const bytes = readFileSync(path)
        if (bytes.length < 1024) continue
        const brotli = brotliCompressSync(bytes, {
          params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length },
        })
        writeFileSync(`${path}.br`, brotli)
        writeFileSync(`${path}.gz`, gzipSync(bytes, { level: 9 }))
      }
    },
  }
}

export default defineConfig({
  plugins: [vue(), precompress()],
  build: {
    target: 'es2022',
    // The report lists gzip sizes; docs/benchmarks.md records them.
    reportCompressedSize: true,
    chunkSizeWarningLimit: 800,
    // The slowest-plugin report names our own compression step, which is expected.
    rolldownOptions: { checks: { pluginTimings: false } },
  },
  server: {
    // `npm run dev` talks to a kiln started with `make run`.
    proxy: {
      '/api': 'http://127.0.0.1:8080',
      '/files': 'http://127.0.0.1:8080',
    },
  },
  test: {
    environment: 'happy-dom',
    include: ['tests/**/*.test.ts'],
    // A test's first dynamic import compiles its view; `make test` runs this beside
    // the Rust suites on two cores, where that alone has taken over the 5 s default.
    // A ceiling against hangs, not a speed check.
    testTimeout: 30_000,
  },
})

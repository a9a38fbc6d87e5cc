// Seeing a model in augmented reality on a phone, with what the phone already has: AR
// Quick Look on iOS and iPadOS (a USDZ behind `<a rel="ar">`), Scene Viewer on Android
// (an intent to the Google app with a GLB URL). Pure functions, so the detection and the
// exact intent are unit-tested; components/ArButton.vue shows them. Desktops get neither.
import type { FormatEntry } from '../api/types'
import { readyFormat } from './downloads'

/** How this browser opens a model in AR, if it can: `quick-look` (iOS), `scene-viewer` (Android). */
export type ArPlatform = 'quick-look' | 'scene-viewer'

/** The hash Scene Viewer's fallback URL carries back when the phone cannot open it. */
export const NO_AR_HASH = '#no-ar'

/**
 * Whether links open in AR Quick Look: Safari on iOS 12+ says so through
 * `relList.supports('ar')` on an anchor (Apple's documented feature test), which is
 * better than reading the user agent (an iPad's Safari says it is a Mac).
 */
export function quickLookSupported(doc: Pick<Document, 'createElement'>): boolean {
  try {
    const anchor = doc.createElement('a')
    return Boolean(anchor.relList?.supports?.('ar'))
  } catch {
    // `supports` throws where the attribute has no list of known tokens.
    return false
  }
}

/** The platform from the feature test first, then Android's user agent; null on a desktop. */
export function arPlatform(userAgent: string, quickLook: boolean): ArPlatform | null {
  if (quickLook) return 'quick-look'
  if (/Android/i.test(userAgent)) return 'scene-viewer'
  return null
}

/** `url` made absolute against `base` (the page's address): Scene Viewer fetches it from outside the page. */
export function absoluteUrl(url: string, base: string): string {
  return new URL(url, base).href
}

/**
 * The Scene Viewer intent for `glbUrl` (absolute). `mode=ar_preferred` opens the camera
 * when the phone has ARCore and the 3D view otherwise; the explicit package makes
 * Chrome hand it to the Google app; when that app is missing, Chrome loads the fallback:
 * this page again with NO_AR_HASH, which says so.
 */
export function sceneViewerIntent(glbUrl: string, title: string, pageUrl: string): string {
  const fallback = `${pageUrl.split('#')[0]}${NO_AR_HASH}`
  return (
    `intent://arvr.google.com/scene-viewer/1.2?mode=ar_preferred&title=${encodeURIComponent(title)}` +
    `&file=${encodeURIComponent(glbUrl)}` +
    '#Intent;scheme=https;package=com.google.android.googlequicksearchbox;action=android.intent.action.VIEW;' +
    `S.browser_fallback_url=${encodeURIComponent(fallback)};end;`
  )
}

/**
 * The GLB Scene Viewer is given: the compatible copy (`model.core.glb`: core glTF, PNG or
 * JPEG textures) when the server made one, since Scene Viewer's renderer may not read
 * the WebP textures or the compression of the others; else the model itself.
 */
export function sceneViewerModel(formats: readonly FormatEntry[] | undefined, modelUrl: string | null): string | null {
  return readyFormat(formats, 'glb-core')?.url ?? modelUrl
}

/**
 * What Quick Look needs and where it stands: `ready` with the USDZ's URL, `preparing`
 * (to be asked for, or being made), or `unavailable` (the server could not make it).
 */
export type QuickLookState = { state: 'ready'; url: string } | { state: 'preparing' } | { state: 'unavailable' }

export function quickLookState(formats: readonly FormatEntry[] | undefined): QuickLookState {
  const ready = readyFormat(formats, 'usdz')
  if (ready?.url) return { state: 'ready', url: ready.url }
  const entry = formats?.find((f) => f.format === 'usdz')
  if (!entry || entry.status === 'failed') return { state: 'unavailable' }
  return { state: 'preparing' }
}

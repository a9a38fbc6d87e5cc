// A chart's drawing width follows its box (one SVG unit per CSS pixel), so axis labels
// keep their size on a phone instead of shrinking with the whole picture.
import { onBeforeUnmount, onMounted, ref, type Ref } from 'vue'

export function useChartWidth(box: Ref<HTMLElement | null>, fallback = 640): Ref<number> {
  const width = ref(fallback)
  let observer: ResizeObserver | null = null
  const measure = () => {
    const w = box.value?.clientWidth ?? 0
    if (w > 0) width.value = Math.max(260, Math.round(w))
  }
  onMounted(() => {
    measure()
    if (typeof ResizeObserver !== 'undefined' && box.value) {
      observer = new ResizeObserver(measure)
      observer.observe(box.value)
    }
  })
  onBeforeUnmount(() => observer?.disconnect())
  return width
}

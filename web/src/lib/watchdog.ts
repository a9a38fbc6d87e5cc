// The 180-second patience of seed 002 §4.3: when a task has not finished that long after
// the page began to wait for it, the page says so and offers to keep waiting (another
// 180 s) or to start again.
export const PATIENCE_MS = 180_000

export class Watchdog {
  private timer: ReturnType<typeof setTimeout> | null = null

  constructor(
    private readonly onExpired: () => void,
    private readonly patience = PATIENCE_MS,
  ) {}

  /** (Re)starts the countdown. */
  arm(): void {
    this.disarm()
    this.timer = setTimeout(() => {
      this.timer = null
      this.onExpired()
    }, this.patience)
  }

  disarm(): void {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
  }

  get armed(): boolean {
    return this.timer !== null
  }
}

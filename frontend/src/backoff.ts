/** Retry delays: exponential backoff with "full jitter", so many clients coming back after
 * an outage do not hit the server in step. */

export const BACKOFF_BASE_MS = 1000;
// A technician waiting on a flaky link should not wait more than half a minute per retry.
export const BACKOFF_MAX_MS = 30_000;

export function backoffDelay(
  attempt: number,
  random: () => number = Math.random,
  base = BACKOFF_BASE_MS,
  max = BACKOFF_MAX_MS,
): number {
  const ceiling = Math.min(max, base * 2 ** Math.max(0, attempt));
  // Never below half the ceiling: a retry storm at 0 ms helps nobody.
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** Wait `ms`, or less if `signal` aborts (then resolves early without throwing). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done);
  });
}

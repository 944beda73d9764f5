/** How big a chunk and how many in flight, for the link we are on.
 *
 * A chunk cut by a dropped connection is lost whole, so on a slow link chunks must be small;
 * on a fast one, bigger chunks cost fewer requests. Several chunks in flight hide the round
 * trip, but every one of them is lost at a cut: two are enough once a chunk takes longer
 * than a round trip, one when a chunk takes many seconds anyway. */

export const MIN_CHUNK = 256 * 1024; // the server's lower bound (docs/upload-api.md)
export const MAX_CHUNK = 8 * 1024 * 1024; // below the 16 MiB bound and most proxies' limits
export const DEFAULT_CHUNK = 1024 * 1024; // when nothing is known about the link
// A chunk should take about this long on the link: little lost at a cut, few requests.
const TARGET_CHUNK_SECONDS = 2;

/** Chunk size (a power of two) for a link of `bytesPerSecond`, or the default if unknown. */
export function chunkSizeFor(bytesPerSecond: number | null): number {
  if (!bytesPerSecond || !isFinite(bytesPerSecond) || bytesPerSecond <= 0) return DEFAULT_CHUNK;
  const ideal = bytesPerSecond * TARGET_CHUNK_SECONDS;
  let size = MIN_CHUNK;
  while (size * 2 <= ideal && size * 2 <= MAX_CHUNK) size *= 2;
  return size;
}

export const MAX_IN_FLIGHT = 3;
/** Chunks in flight when the engine starts: it steps up one per answer (nextInFlight). */
export const FIRST_IN_FLIGHT = 1;

/** Chunks in flight after a chunk took `seconds` with `current` in flight. */
export function nextInFlight(current: number, seconds: number): number {
  const perChunk = seconds / Math.max(1, current); // the link is shared by those in flight
  let target = MAX_IN_FLIGHT;
  if (perChunk > 20) target = 1;
  else if (perChunk > 1.5) target = 2;
  // Move one step at a time so a single odd chunk does not swing the pipeline.
  if (target < current) return current - 1;
  if (target > current) return current + 1;
  return current;
}

/** How long the app keeps to the server's `max_in_flight` after an answer carried it. */
export const SERVER_ADVICE_MS = 10_000;

// A chunk request that has neither failed nor been answered after this long is given up
// and sent again: a connection can stall without ever being reset (a mobile network that
// drops it silently, a proxy that stops forwarding), and fetch has no timeout of its own,
// so without this one engine would wait on it for good. A minute, plus the chunk's time on
// the slowest link the app is meant for (64 kbit/s): never while bytes still flow. The
// engine passes the bytes of every chunk in flight (they share the link).
export const CHUNK_STALL_BASE_MS = 60_000;
export const SLOWEST_LINK_BYTES_PER_SECOND = 8_000;
export function chunkStallMs(bytes: number): number {
  return CHUNK_STALL_BASE_MS + Math.ceil((bytes / SLOWEST_LINK_BYTES_PER_SECOND) * 1000);
}

/** The server's advice in a chunk's answer (`max_in_flight`), as a limit until when. */
export interface InFlightAdvice {
  limit: number;
  until: number; // Date.now() milliseconds
}

/** Chunks in flight after a chunk took `seconds` with `current` in flight, within the
 * server's advice while it holds: a busy server asks for one at a time (its chunks queue
 * there, so more at once only wait longer), and the app steps up again, one chunk at a time,
 * once the advice has not been repeated for a while. */
export function advisedInFlight(current: number, seconds: number, advice: InFlightAdvice | null, now: number): number {
  const next = nextInFlight(current, seconds);
  if (!advice || now >= advice.until) return next;
  return Math.max(1, Math.min(next, advice.limit));
}

/** The advice an answer's `max_in_flight` gives at `now`, or the one still holding. */
export function adviceFrom(maxInFlight: unknown, previous: InFlightAdvice | null, now: number): InFlightAdvice | null {
  if (typeof maxInFlight === "number" && Number.isInteger(maxInFlight) && maxInFlight >= 1) {
    return { limit: Math.min(maxInFlight, MAX_IN_FLIGHT), until: now + SERVER_ADVICE_MS };
  }
  return previous && now < previous.until ? previous : null;
}

interface NetworkInformation {
  downlink?: number; // Mbit/s, as the browser estimates it
}

/** The browser's estimate of the link speed in bytes per second, where it has one. */
export function browserLinkEstimate(): number | null {
  const connection = (globalThis.navigator as Navigator & { connection?: NetworkInformation } | undefined)?.connection;
  if (!connection?.downlink) return null;
  return (connection.downlink * 1_000_000) / 8;
}

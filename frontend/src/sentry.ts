/**
 * Error reports from the app to Sentry, only in a build made with VITE_SENTRY_DSN (and
 * VITE_SENTRY_RELEASE, the app's version), without patient data.
 *
 * @sentry/browser is loaded only when a DSN was built in. What never leaves (scrubEvent,
 * scrubBreadcrumb): exception messages (they can quote a file's name or a DICOM value),
 * local variables, request bodies, cookies and query strings, console and UI breadcrumbs,
 * the user, and any value under a key that names a patient, a person, a file, a path or an
 * archive entry, or that looks like a DICOM person name or a file path.
 *
 * Build with hidden source maps and upload them (see deploy/README.md):
 *   VITE_SENTRY_DSN=... VITE_SENTRY_RELEASE=relaypacs-pwa@$(node -p "require('./package.json').version") \
 *     npx vite build --sourcemap hidden
 *   npx @sentry/cli sourcemaps upload --release "$VITE_SENTRY_RELEASE" dist
 */
import type { Breadcrumb, ErrorEvent } from "@sentry/browser";

export const FILTERED = "[Filtered]";
const SENSITIVE_KEY =
  /patient|name|birth|physician|accession|institution|file|path|entry|entries|archive|body|data|cookie|password|secret|token|authorization|note|comment|address|email/i;
const LOOKS_SENSITIVE = /\^|[\\/][^\s]*[\\/]|\.(dcm|zip|rar|jpe?g|png|pdf|tar|gz)\b/i;
const HEADERS_KEPT = new Set(["user-agent", "content-type", "content-length", "x-request-id"]);
const DROPPED_CATEGORIES = new Set(["console", "ui.click", "ui.input"]);

export function scrubValue(value: unknown, depth = 0): unknown {
  if (depth > 10) return FILTERED;
  if (Array.isArray(value)) return value.map((item) => scrubValue(item, depth + 1));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value as Record<string, unknown>).map(([key, item]) => [
        key,
        SENSITIVE_KEY.test(key) ? FILTERED : scrubValue(item, depth + 1),
      ]),
    );
  }
  if (typeof value === "string" && LOOKS_SENSITIVE.test(value)) return FILTERED;
  return value;
}

export function scrubBreadcrumb(crumb: Breadcrumb): Breadcrumb | null {
  if (crumb.category && DROPPED_CATEGORIES.has(crumb.category)) return null;
  const scrubbed: Breadcrumb = { ...crumb };
  if (scrubbed.data) scrubbed.data = scrubValue(scrubbed.data) as Record<string, unknown>;
  if (typeof scrubbed.message === "string" && LOOKS_SENSITIVE.test(scrubbed.message)) {
    scrubbed.message = FILTERED;
  }
  return scrubbed;
}

export function scrubEvent(event: ErrorEvent): ErrorEvent {
  for (const exception of event.exception?.values ?? []) {
    if (exception.value) exception.value = FILTERED;
    for (const frame of exception.stacktrace?.frames ?? []) delete frame.vars;
  }
  if (event.request) {
    delete event.request.data;
    delete event.request.cookies;
    delete event.request.query_string;
    if (event.request.url) event.request.url = event.request.url.split("?")[0];
    if (event.request.headers) {
      event.request.headers = Object.fromEntries(
        Object.entries(event.request.headers).filter(([name]) => HEADERS_KEPT.has(name.toLowerCase())),
      );
    }
  }
  if (event.extra) event.extra = scrubValue(event.extra) as ErrorEvent["extra"];
  if (event.contexts) event.contexts = scrubValue(event.contexts) as ErrorEvent["contexts"];
  if (event.tags) event.tags = scrubValue(event.tags) as ErrorEvent["tags"];
  if (typeof event.message === "string" && LOOKS_SENSITIVE.test(event.message)) {
    event.message = FILTERED;
  }
  delete event.user;
  if (event.breadcrumbs) {
    event.breadcrumbs = event.breadcrumbs
      .map((crumb) => scrubBreadcrumb(crumb))
      .filter((crumb): crumb is Breadcrumb => crumb !== null);
  }
  return event;
}

/** Start Sentry when the build has a DSN; otherwise nothing is loaded or sent (a build
 * without VITE_SENTRY_DSN does not even contain @sentry/browser: the check is constant). */
export async function sentryStart(): Promise<boolean> {
  if (!import.meta.env.VITE_SENTRY_DSN) return false;
  const Sentry = await import("@sentry/browser");
  Sentry.init({
    dsn: String(import.meta.env.VITE_SENTRY_DSN),
    release: import.meta.env.VITE_SENTRY_RELEASE ? String(import.meta.env.VITE_SENTRY_RELEASE) : undefined,
    environment: import.meta.env.MODE,
    // No user, address or cookies are attached by default; the scrubber removes the rest.
    beforeSend: scrubEvent,
    beforeBreadcrumb: scrubBreadcrumb,
  });
  return true;
}

void sentryStart();

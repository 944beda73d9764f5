/** When the app offers to be added to the home screen: after the user has engaged with it
 * (a second visit, or half a minute on the page), never before, and not again once
 * dismissed. A quiet banner, so that "Upload study" stays the one primary action. */
import { useEffect, useState } from "react";

export const VISITS_KEY = "relaypacs-visits";
export const DISMISSED_KEY = "relaypacs-install-dismissed";
// The engagement that earns the offer: a second visit, or this long on the page.
export const ENGAGED_VISITS = 2;
export const ENGAGED_MS = 30_000;

export function installOfferDue(input: { available: boolean; dismissed: boolean; visits: number; msOnPage: number }): boolean {
  return input.available && !input.dismissed && (input.visits >= ENGAGED_VISITS || input.msOnPage >= ENGAGED_MS);
}

function read(key: string): string | null {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function write(key: string, value: string): void {
  try {
    localStorage.setItem(key, value);
  } catch {
    // No storage: the offer simply comes back next time.
  }
}

let visitCounted: number | null = null;

/** This page load counts as one visit (once, however often the hook runs). */
export function countVisit(): number {
  if (visitCounted === null) {
    visitCounted = (Number(read(VISITS_KEY)) || 0) + 1;
    write(VISITS_KEY, String(visitCounted));
  }
  return visitCounted;
}

interface InstallPromptEvent extends Event {
  prompt(): Promise<void>;
}

/** The install offer, when due: `install` shows the browser's prompt, `dismiss` hides it for good. */
export function useInstallOffer(): { install: () => void; dismiss: () => void } | null {
  const [event, setEvent] = useState<InstallPromptEvent | null>(null);
  const [dismissed, setDismissed] = useState(() => read(DISMISSED_KEY) === "1");
  const [visits] = useState(countVisit);
  const [since] = useState(() => Date.now());
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const handler = (e: Event) => {
      e.preventDefault();
      setEvent(e as InstallPromptEvent);
    };
    window.addEventListener("beforeinstallprompt", handler);
    return () => window.removeEventListener("beforeinstallprompt", handler);
  }, []);
  useEffect(() => {
    if (!event || visits >= ENGAGED_VISITS || now - since >= ENGAGED_MS) return;
    const timer = setTimeout(() => setNow(Date.now()), ENGAGED_MS - (now - since));
    return () => clearTimeout(timer);
  }, [event, visits, now, since]);
  if (!installOfferDue({ available: event !== null, dismissed, visits, msOnPage: now - since })) return null;
  return {
    install: () => {
      void event!.prompt();
      setEvent(null);
    },
    dismiss: () => {
      write(DISMISSED_KEY, "1");
      setDismissed(true);
    },
  };
}

/** The app icon's badge (the Badging API): the number of unread notifications, set by the
 * page whenever it knows the count and by the service worker when a push brings it, cleared
 * when none is unread. Only installed apps show it (on iOS only with the notification
 * permission); where the API is missing or refuses, nothing happens. Nothing here talks to
 * the network. */

/** The part of `navigator` (a page's or the service worker's) that sets the badge. */
export interface BadgeNavigator {
  setAppBadge?: (contents?: number) => Promise<void>;
  clearAppBadge?: () => Promise<void>;
}

function defaultNavigator(): BadgeNavigator | undefined {
  return typeof navigator === "undefined" ? undefined : (navigator as BadgeNavigator);
}

/** Show `unread` on the app icon, or clear the badge when it is 0 (or not a count).
 * Never throws: a badge refused (not installed, no permission) is simply not shown. */
export async function badgeSet(unread: number, nav: BadgeNavigator | undefined = defaultNavigator()): Promise<void> {
  if (!nav) return;
  const count = Number.isFinite(unread) ? Math.max(0, Math.floor(unread)) : 0;
  try {
    if (count > 0) {
      if (typeof nav.setAppBadge === "function") await nav.setAppBadge(count);
    } else if (typeof nav.clearAppBadge === "function") await nav.clearAppBadge();
  } catch {
    // Not allowed here: no badge.
  }
}

/** What the page's notification centre (notifications.ts) offers the badge. */
export interface UnreadSource {
  get(): { loaded: boolean; unreadCount: number };
  subscribe(listener: () => void): () => void;
}

/** Keep the badge equal to the centre's unread count each time the centre has one from the
 * server (before its first load it says nothing, so the count a push set stays). Returns
 * the function that stops following. */
export function badgeFollow(source: UnreadSource, nav?: BadgeNavigator): () => void {
  const update = () => {
    const { loaded, unreadCount } = source.get();
    if (loaded) void badgeSet(unreadCount, nav ?? defaultNavigator());
  };
  update();
  return source.subscribe(update);
}

/** The notification centre (newest first, unread count, mark read / unread, mark all
 * read, open the study or report), its toolbar button with the unread badge, and the
 * toasts shown when a notification arrives while the app is open. */
import { dismissToast, useCentre, useLiveConnected, useToasts } from "./live";
import type { ServerNotification } from "./liveStream";
import { centre } from "./notifications";
import { navigate, type Route } from "./router";
import { ErrorBox, useHeadingFocus } from "./ui";
import { CENTRE_WORDS } from "./words";

/** Where a notification leads: its report, or its study. */
export function notificationTarget(n: Pick<ServerNotification, "upload_id" | "report_id">): Route | null {
  if (n.report_id) return { screen: "reports", focus: n.report_id };
  if (n.upload_id) return { screen: "study", uploadId: n.upload_id };
  return null;
}

function when(iso: string): string {
  const date = new Date(iso);
  return isNaN(date.getTime()) ? "" : date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

/** Open what the notification is about, marking it read. */
function open(n: ServerNotification): void {
  const target = notificationTarget(n);
  if (!n.read) void centre.mark(n.id, true);
  if (target) navigate(target);
}

export function NotificationsButton() {
  const { unreadCount } = useCentre();
  const label = unreadCount ? `${CENTRE_WORDS.button}, ${CENTRE_WORDS.unread(unreadCount)}` : CENTRE_WORDS.button;
  return (
    <button className="bell" onClick={() => navigate({ screen: "notifications" })} aria-label={label} data-testid="notifications-button">
      {CENTRE_WORDS.button}
      {unreadCount > 0 && (
        <span className="count" data-testid="unread-count" aria-hidden="true">
          {unreadCount > 99 ? "99+" : unreadCount}
        </span>
      )}
    </button>
  );
}

function Item({ n, online }: { n: ServerNotification; online: boolean }) {
  const target = notificationTarget(n);
  return (
    <li className={`notification ${n.read ? "read" : "unread"}`} data-testid="notification" data-notification-id={n.id} data-read={n.read}>
      <div className="study-head">
        <span className="notification-title">
          {!n.read && <span className="dot" aria-label="Unread" />}
          {n.title}
        </span>
        <time className="numbers" dateTime={n.created_at}>
          {when(n.created_at)}
        </time>
      </div>
      {n.body && <p className="notification-body">{n.body}</p>}
      <div className="actions">
        {target && (
          <button className="primary" onClick={() => open(n)}>
            {target.screen === "reports" ? CENTRE_WORDS.openReport : CENTRE_WORDS.openStudy}
          </button>
        )}
        <button onClick={() => void centre.mark(n.id, !n.read)} disabled={!online}>
          {n.read ? CENTRE_WORDS.markUnread : CENTRE_WORDS.markRead}
        </button>
      </div>
    </li>
  );
}

export function NotificationCentre({ online }: { online: boolean }) {
  const heading = useHeadingFocus<HTMLHeadingElement>();
  const state = useCentre();
  const connected = useLiveConnected();
  return (
    <main className="screen">
      <div className="toolbar">
        <h1 ref={heading} tabIndex={-1}>
          {CENTRE_WORDS.title}
        </h1>
        <div className="actions">
          <button onClick={() => navigate({ screen: "home" })}>{CENTRE_WORDS.back}</button>
        </div>
      </div>
      <div className="centre-head">
        <span className="badge" data-testid="centre-unread">
          {CENTRE_WORDS.unread(state.unreadCount)}
        </span>
        <div className="actions">
          <button onClick={() => void centre.load()} disabled={!online}>
            {CENTRE_WORDS.refresh}
          </button>
          <button onClick={() => void centre.markAllRead()} disabled={!online || state.unreadCount === 0}>
            {CENTRE_WORDS.markAllRead}
          </button>
        </div>
      </div>
      {online && (
        <p className={connected ? "live-mark on" : "live-mark"} role="status" data-testid="live-state" data-live={connected}>
          {connected ? CENTRE_WORDS.live : CENTRE_WORDS.notLive}
        </p>
      )}
      {!online && (
        <p className="offline-mark" role="status">
          {state.loaded ? CENTRE_WORDS.offline : CENTRE_WORDS.notLoaded}
        </p>
      )}
      {state.error && online && <ErrorBox error={state.error} />}
      {state.loaded && state.items.length === 0 && <p className="note">{CENTRE_WORDS.empty}</p>}
      <ul className="studies" data-testid="notifications">
        {state.items.map((n) => (
          <Item key={n.id} n={n} online={online} />
        ))}
      </ul>
      {state.more && <p className="note">{CENTRE_WORDS.more}</p>}
    </main>
  );
}

export function Toasts() {
  const toasts = useToasts();
  if (!toasts.length) return null;
  return (
    <div className="toasts" aria-live="polite" aria-label={CENTRE_WORDS.newOne}>
      {toasts.map(({ key, notification: n }) => {
        const target = notificationTarget(n);
        return (
          <div className="toast" role="status" key={key} data-testid="toast">
            <strong>{n.title}</strong>
            {n.body && <span className="toast-body">{n.body}</span>}
            <span className="actions">
              {target && (
                <button
                  className="link"
                  onClick={() => {
                    dismissToast(key);
                    open(n);
                  }}
                >
                  {target.screen === "reports" ? CENTRE_WORDS.openReport : CENTRE_WORDS.openStudy}
                </button>
              )}
              <button className="link" onClick={() => dismissToast(key)}>
                {CENTRE_WORDS.toastClose}
              </button>
            </span>
          </div>
        );
      })}
    </div>
  );
}

/** What the app says for each error the API can return (docs/upload-api.md): the server's
 * own sentences when they are plain words, the app's when they name an API field or code
 * (a technician cannot act on "see rejected_files"), and always the app's where the app
 * offers its own choices. */
import type { UserError } from "./db";

/** An API name (`rejected_files`, `allow_partial`, `invalid_files`): snake_case. */
const API_NAME = /\b[a-z][a-z0-9]*_[a-z0-9_]+\b/;

export function namesApiField(text: string): boolean {
  return API_NAME.test(text);
}

type Words = { message: string; hint: string };

const NETWORK: Words = { message: "The server cannot be reached.", hint: "The study stays on this device and is sent when the connection is back." };
const SIGN_IN: Words = { message: "You need to sign in again.", hint: "Sign in with your username and password; your queued studies are kept." };
const STATE: Words = { message: "The server cannot do that with this study in its current state.", hint: "Wait a moment for the study's card to update, then try again." };
const GONE: Words = { message: "The server no longer has this upload.", hint: "Press Send again to send the study from this device, or pick its files again." };
const BAD_FILES: Words = {
  message: "Some files of this study are damaged or not valid DICOM, so nothing was sent to the PACS.",
  hint: "Copy the damaged files again from the source and send the study again, or send the other files without them.",
};
const ARCHIVE_LIMIT: Words = { message: "The archives in this study unpack to more than the server accepts for one upload.", hint: "Send the study in several smaller parts, or send its files without the archive." };
const PACS: Words = { message: "The PACS did not take this study.", hint: "Press Retry; if it fails again, tell your administrator." };

/** The app's words per code: used when the server's words name API fields, or always for
 * the codes in `ALWAYS`. */
export const APP_WORDS: Record<string, Words> = {
  invalid_manifest: { message: "The app sent a list of files the server could not read.", hint: "Pick the files again; if it happens again, tell your administrator." },
  invalid_chunk_size: { message: "The app asked for a piece size the server does not accept.", hint: "Reset the upload settings to the default, then send the study again." },
  checksum_required: { message: "A piece of the study reached the server without its check.", hint: "Press Retry; if it happens again, tell your administrator." },
  not_authenticated: SIGN_IN,
  authentication_failed: SIGN_IN,
  invalid_refresh_token: SIGN_IN,
  sign_in_required: SIGN_IN,
  invalid_credentials: { message: "The username or password is not correct, or the account's email address is not confirmed yet.", hint: "" },
  permission_denied: { message: "This account cannot do that.", hint: "Ask your administrator for an account that sends studies." },
  account_pending_approval: { message: "Your account is waiting for an administrator's approval.", hint: "You can send studies once an administrator has approved the account." },
  not_found: GONE,
  possible_duplicate: { message: "The server already has a study with the same patient, date and modality from the last 30 days.", hint: "Check that it is not the same study; if it is another, press Send anyway." },
  chunk_conflict: { message: "A piece of this study reached the server twice with different contents.", hint: "Cancel the study and pick its files again." },
  upload_incomplete: { message: "Some pieces of this study have not reached the server yet.", hint: "The app sends them by itself; keep it open." },
  upload_not_receiving: STATE,
  upload_completed: { message: "This study was already delivered to the PACS.", hint: "Ask the PACS administrator if it must be removed there." },
  nothing_to_confirm: STATE,
  nothing_to_retry: { message: "The server no longer has this study's files, so it cannot retry it.", hint: "Press Send again to send the study from this device, or pick its files again." },
  upload_expired: { message: "The upload waited too long for its next piece and was closed.", hint: "Press Send again to send the study from this device." },
  upload_too_large: { message: "This study is larger than the server accepts for one upload.", hint: "Send it in several smaller parts." },
  checksum_mismatch: { message: "A piece of the study was damaged on the way.", hint: "Press Retry; the app sends it again." },
  chunk_out_of_range: { message: "The app and the server disagree about this upload's pieces.", hint: "Press Send again to start the upload again." },
  chunk_size_mismatch: { message: "The app and the server disagree about this upload's pieces.", hint: "Press Send again to start the upload again." },
  server_busy: { message: "The server was too busy to take a piece of this study just then; nothing of it was lost.", hint: "The app sends it again by itself; keep it open, or press Retry." },
  storage_unavailable: { message: "The server could not store this study safely just then.", hint: "The app sends it again by itself after a short wait; tell your administrator if this keeps happening." },
  insufficient_storage: { message: "The server has no room for this study right now.", hint: "Try again later and tell your administrator." },
  invalid_files: BAD_FILES,
  no_dicom_files: { message: "None of the files in this study is a DICOM image that can be sent.", hint: "Pick the study's image files (not only the CD index or documents) and send them." },
  unsafe_archive: { message: "The archive contains a link that leads outside it, so it was not unpacked.", hint: "Send the files themselves, or an archive made without links." },
  archive_encrypted: { message: "The archive is protected by a password.", hint: "Send an archive without a password, or the files themselves." },
  archive_corrupt: { message: "The archive is damaged and could not be unpacked.", hint: "Copy it again from the source, or send the files themselves." },
  archive_unsupported: { message: "The server cannot unpack this kind of archive.", hint: "Make a ZIP of the files instead, or send the files themselves." },
  archive_too_large: ARCHIVE_LIMIT,
  archive_ratio_exceeded: { message: "The archive expands far more than images ever do, so it was not unpacked.", hint: "If it is genuine, send its files without compressing them." },
  archive_too_many_entries: { message: "The archives in this study hold more files than the server unpacks for one upload.", hint: "Send the study in several parts, or send the folder itself." },
  processing_failed: { message: "The server could not check this study.", hint: "Press Send again; if it fails again, tell your administrator." },
  forwarding_failed: { message: "Sending this study to the PACS was interrupted several times.", hint: "Press Retry; if it fails again, tell your administrator." },
  pacs_refused_instances: { message: "The PACS refused some images of this study.", hint: "Press Retry; if the PACS refuses them again, tell your administrator." },
  pacs_rejected: PACS,
  pacs_unreachable: { message: "The PACS could not be reached for a long time, so sending stopped.", hint: "Press Retry when the PACS is back; if unsure, tell your administrator." },
  pacs_unavailable: { message: "The PACS cannot be reached right now.", hint: "The server keeps trying by itself; nothing to do on this device." },
  pacs_not_listing: { message: "The PACS took the images but does not list them yet.", hint: "The server keeps checking by itself; nothing to do on this device." },
  upload_damaged: { message: "The server's copy of this study is damaged.", hint: "Press Send again to send the study from this device." },
  upload_lost_in_restore: { message: "The server was restored from a backup after this study arrived, and its copy of the study was lost.", hint: "Press Send again to send the study from this device." },
  no_pacs_configured: { message: "No PACS is set up on the server.", hint: "Tell your administrator; press Retry once it is set up." },
  network_unavailable: NETWORK,
  unknown_study: { message: "The study these images were added to was not sent from this account or its clinic, or an administrator has removed it from RelayPACS.", hint: "Cancel this upload and send the images as a new study." },
  report_gone: { message: "The report these images were added to is no longer open to this account.", hint: "Cancel this upload; if the images are still needed, send them as a new study." },
};

// Where the app offers its own choices, its words say so whatever the server wrote; for
// the sign-in, one sentence (the server writes three).
const ALWAYS = new Set(["invalid_files", "nothing_to_retry", "invalid_credentials", "not_found"]);

const FALLBACK: Words = { message: "Something went wrong while sending this study.", hint: "Press Retry; if it happens again, tell your administrator." };

/** The sentences to show for an error with `code` whose server text is `message`/`hint`. */
export function userWords(code: string, message: string, hint: string): Words {
  const app = APP_WORDS[code];
  if (app && ALWAYS.has(code)) return app;
  const plain = (text: string) => !namesApiField(text);
  const useMessage = message && plain(message) ? message : (app ?? FALLBACK).message;
  // A hint is the server's only when its message was: they are written as a pair.
  const useHint = useMessage === message && plain(hint) ? hint : (app ?? FALLBACK).hint;
  return { message: useMessage, hint: useHint };
}

export function plainError(error: UserError): UserError {
  return { code: error.code, ...userWords(error.code, error.message, error.hint) };
}

/** A report's state (docs/reports.md, "States") as the sending clinic reads it. */
export const REPORT_STATE_WORDS: Record<string, string> = {
  assigned: "Waiting for a radiologist",
  pending: "Being read",
  additional_data_required: "The radiologist has a question",
  ready: "Report ready",
  amended: "Report corrected",
  cancelled: "Will not be reported",
};

/** The words for a report's `status`; a state this app does not know yet still reads as words. */
export function reportStateWords(status: string): string {
  return REPORT_STATE_WORDS[status] ?? "Report state not known to this app";
}

// What the report endpoints can answer (docs/reports.md), in the Reports screen's words:
// "not_found" there is a report, not an upload, and the way out is the screen's own.
const REPORT_WORDS: Record<string, Words> = {
  not_found: { message: "This report is no longer open to this account.", hint: "Pull the list again with Refresh; if it should be there, ask your administrator." },
  report_not_ready: { message: "The report's PDF is not ready yet.", hint: "Wait until the report says “Report ready”, then open it again." },
  report_state_conflict: { message: "The report changed on the server in the meantime.", hint: "Press Refresh to see where it is now; your answer is kept below if it was not sent." },
  invalid_request: { message: "The server did not take this answer.", hint: "Write the answer again (it cannot be empty) and send it." },
  permission_denied: { message: "This account cannot answer radiologists' questions.", hint: "Sign in with the clinician or radiographer account that sent the study." },
  network_unavailable: { message: "The server cannot be reached.", hint: "What was loaded before is shown; connect to the network and press Refresh." },
  bad_pdf: { message: "The server sent something that is not a PDF.", hint: "Try again in a minute; if it keeps happening, tell your administrator." },
};
const REPORT_ALWAYS = new Set(["not_found", "network_unavailable", "report_state_conflict"]);

/** The sentences the Reports screen shows for an error of a report endpoint. */
export function reportWords(code: string, message: string, hint: string): Words {
  const own = REPORT_WORDS[code];
  if (own && (REPORT_ALWAYS.has(code) || !message || namesApiField(message) || namesApiField(hint))) return own;
  if (message && !namesApiField(message)) return { message, hint: namesApiField(hint) ? (own?.hint ?? "Try again; if it happens again, tell your administrator.") : hint };
  return own ?? { message: "Something went wrong with this report.", hint: "Press Refresh and try again; if it happens again, tell your administrator." };
}

// The notification centre and the live connection (docs/notifications.md), in the app's
// words: the server's sentences for these endpoints name no choice the centre offers.
const NOTIFICATION_ERRORS: Record<string, Words> = {
  network_unavailable: { message: "The server cannot be reached, so the notifications cannot be brought up to date.", hint: "Connect to the network; the centre updates by itself when the connection is back." },
  not_found: { message: "This notification is no longer on the server.", hint: "Press Refresh to load the list again." },
  sign_in_required: SIGN_IN,
  not_authenticated: SIGN_IN,
  authentication_failed: SIGN_IN,
};
const NOTIFICATION_FALLBACK: Words = { message: "The notifications could not be loaded or changed.", hint: "Press Refresh and try again; if it happens again, tell your administrator." };

export function notificationWords(code: string): Words {
  return NOTIFICATION_ERRORS[code] ?? NOTIFICATION_FALLBACK;
}

/** The notification centre's own words. */
export const CENTRE_WORDS = {
  title: "Notifications",
  button: "Notifications",
  unread: (n: number) => (n === 1 ? "1 unread" : `${n} unread`),
  empty: "No notifications yet. You are told here when the PACS has received a study, when a study needs you, and when a report is ready.",
  markRead: "Mark as read",
  markUnread: "Mark as unread",
  markAllRead: "Mark all as read",
  openStudy: "Open the study",
  openReport: "Open the report",
  refresh: "Refresh",
  back: "Back to studies",
  more: "Older notifications are kept on the server; the newest are shown here.",
  offline: "You are offline: the notifications shown are those loaded before. They are brought up to date when the network is back.",
  notLoaded: "You are offline, and the notifications have not been loaded yet. Connect to the network to see them.",
  live: "Live: studies and reports update here as they change.",
  notLive: "Not connected to live updates: the app checks the studies itself every few seconds and reconnects by itself.",
  toastClose: "Close",
  newOne: "New notification",
};

/** What the study screen (opened from a notification) says. */
export const STUDY_WORDS = {
  title: "Study",
  notOnDevice: "This study is no longer on this device; what the server knows of it is shown.",
  gone: { code: "not_found", message: "The server no longer has this study.", hint: "Go back to the studies; the history lists what this account sent." },
  loading: "Loading the study…",
  offline: { code: "network_unavailable", message: "The server cannot be reached, so the study cannot be shown.", hint: "Connect to the network and open it again from the notification." },
};

// The dashboard (docs/analytics.md): who gets upload statistics, and what to do otherwise.
const DASHBOARD_ERRORS: Record<string, Words> = {
  permission_denied: { message: "Upload statistics are for clinic staff and administrators.", hint: "Sign in with a clinician, radiographer or administrator account to see them." },
  no_facility: { message: "This account belongs to no facility, so it has no figures to show.", hint: "Ask your administrator to set your facility." },
  account_pending_approval: { message: "Your account is waiting for an administrator's approval.", hint: "The figures are shown once an administrator has approved the account." },
  network_unavailable: { message: "The server cannot be reached.", hint: "The last figures this device loaded are shown, marked as cached; they are brought up to date when the network is back." },
  sign_in_required: SIGN_IN,
};
const DASHBOARD_FALLBACK: Words = { message: "The figures could not be loaded.", hint: "Press Refresh; if it happens again, tell your administrator." };

export function dashboardWords(code: string): Words {
  return DASHBOARD_ERRORS[code] ?? DASHBOARD_FALLBACK;
}

export const DASHBOARD_WORDS = {
  title: "Dashboard",
  button: "Dashboard",
  periods: { "1w": "1 week", "2w": "2 weeks", "1m": "1 month", "3m": "3 months", "6m": "6 months", all: "All" } as Record<string, string>,
  uploads: "Uploads",
  success: "Success rate",
  average: "Average time to the PACS",
  volume: "Data sent",
  byModality: "By modality",
  byLevel: "By service level",
  trend: "Uploads per day",
  nothing: "No uploads in this period.",
  refresh: "Refresh",
  back: "Back to studies",
  cached: (when: string) => `Cached — figures of ${when}`,
  noCache: "You are offline, and this device has not loaded these figures yet. Connect to the network to see them.",
  updated: (when: string) => `Figures of ${when}; refreshed every minute.`,
  levels: { routine: "Routine", urgent: "Urgent", emergency: "Emergency", stat: "STAT" } as Record<string, string>,
  filters: "Filters",
  facility: "Facility",
  modality: "Modality",
  serviceLevel: "Service level",
  everyFacility: "Every facility",
  everyModality: "Every modality",
  everyLevel: "Every service level",
  clearFilters: "Clear filters",
  byFacility: "By facility",
  facilityColumns: { facility: "Facility", uploads: "Uploads", success: "Success", average: "Average time", bytes: "Data" },
  download: "Download CSV",
  downloading: "Downloading…",
  downloadOffline: "The CSV could not be downloaded because this device is offline: connect to the network and press Download CSV again.",
  downloadFailed: (why: string) => `The CSV could not be downloaded: ${why}`,
};

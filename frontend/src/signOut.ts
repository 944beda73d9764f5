/** What signing out would leave behind on this device, and the words of the warning: the
 * studies the PACS has not received yet and the answers to the radiologist not yet sent
 * (queued or refused; they may describe the patient, so they never outlive the sign-out).
 * Also what signing out does for this device's notifications, and "clear local data". */
import { ApiError } from "./api";
import { signOut } from "./auth";
import { badgeSet } from "./badge";
import { db, type QueuedReply, type Study } from "./db";
import { liveFor } from "./live";
import { pushForget } from "./push";
import { unsentReplies } from "./reports";
import { startUploads, stopUploads } from "./runtime";
import { discardAll, unfinishedStudies } from "./studies";
import { UPLOADER_LOCK } from "./uploader";

export interface LeftOnDevice {
  studies: number;
  replies: number;
}

export async function leftOnDevice(owner: string): Promise<LeftOnDevice> {
  const [studies, replies] = await Promise.all([unfinishedStudies(owner), unsentReplies(owner)]);
  return { studies: studies.length, replies };
}

export function somethingLeft(left: LeftOnDevice): boolean {
  return left.studies > 0 || left.replies > 0;
}

/** The warning's sentences, one per kind of thing left. */
export function leftWords(left: LeftOnDevice): string[] {
  const out: string[] = [];
  if (left.studies) out.push(`${left.studies === 1 ? "1 study is" : `${left.studies} studies are`} not yet received by the PACS.`);
  if (left.replies) {
    out.push(
      `${left.replies === 1 ? "1 answer" : `${left.replies} answers`} to the radiologist ${left.replies === 1 ? "is" : "are"} not yet sent; signing out deletes ${left.replies === 1 ? "it" : "them"} from this device.`,
    );
  }
  return out;
}

/** The two choices of the warning: stay and finish, or lose what is left and sign out. */
export function leftChoices(left: LeftOnDevice): { stay: string; discard: string } {
  if (left.studies) return { stay: "Stay signed in and finish them", discard: "Discard them and sign out" };
  return { stay: "Stay signed in and send them", discard: "Delete them and sign out" };
}

/** What signing out (or clearing the device) does first for this device's notifications:
 * the push subscription goes from the server and the browser (push.ts `pushForget`, a few
 * seconds at most, failures ignored: signing out never waits on it) and the app icon's
 * badge is cleared. */
export async function deviceForget(): Promise<void> {
  await pushForget();
  await badgeSet(0);
}

/** What clearing the device would delete before it is sent, for every account that used
 * it: `studies` and `replies` as in `LeftOnDevice` but counting everyone's, and of them
 * `othersStudies`, `othersReplies` those of accounts other than the signed-in one. The
 * optional fields are 0 when absent. */
export interface DeviceLeft extends LeftOnDevice {
  othersStudies?: number;
  othersReplies?: number;
  /** Cancels asked for (any account) the server has not confirmed: clearing loses them and
   * the server keeps those uploads open until they time out. */
  cancels?: number;
  othersCancels?: number;
  /** The signed-in user's unsent studies the server already has an upload for: clearing
   * cancels them there first, which needs the network. */
  ownStarted?: number;
}

/** Count what clearing would delete unsent (see `DeviceLeft`), from every study and answer
 * on the device; `owner` is the signed-in user. A cancel of a study the server never heard
 * of (no upload yet) loses nothing and is not counted. Pure. */
export function deviceLeftOf(
  owner: string,
  studies: readonly Pick<Study, "owner" | "state" | "uploadId">[],
  replies: readonly Pick<QueuedReply, "owner">[],
): Required<DeviceLeft> {
  const left: Required<DeviceLeft> = { studies: 0, othersStudies: 0, replies: 0, othersReplies: 0, cancels: 0, othersCancels: 0, ownStarted: 0 };
  for (const study of studies) {
    const other = study.owner !== owner;
    if (study.state === "cancelling") {
      if (!study.uploadId) continue;
      left.cancels++;
      if (other) left.othersCancels++;
    } else if (study.state !== "completed" && study.state !== "cancelled") {
      left.studies++;
      if (other) left.othersStudies++;
      else if (study.uploadId) left.ownStarted++;
    }
  }
  for (const reply of replies) {
    left.replies++;
    if (reply.owner !== owner) left.othersReplies++;
  }
  return left;
}

/** `deviceLeftOf` for what is on this device now. */
export async function deviceLeft(owner: string): Promise<Required<DeviceLeft>> {
  const [studies, replies] = await Promise.all([db.studies.toArray(), db.replies.toArray()]);
  return deviceLeftOf(owner, studies, replies);
}

/** Whether clearing would lose anything unsent (then it asks a second time). */
export function somethingOnDevice(left: DeviceLeft): boolean {
  return somethingLeft(left) || (left.cancels ?? 0) > 0;
}

function plural(count: number, one: string, many: string): string {
  return count === 1 ? one : many;
}

/** "1 study", "2 studies from other accounts", "3 studies" + ", 1 of them from another
 * account": the subject of a sentence and what follows the verb. */
function whose(count: number, others: number, one: string, many: string): { subject: string; after: string } {
  const noun = `${count} ${plural(count, one, many)}`;
  const from = plural(others, "another account", "other accounts");
  if (!others) return { subject: noun, after: "" };
  if (others === count) return { subject: `${noun} from ${from}`, after: "" };
  return { subject: noun, after: `, ${others} of them from ${from}` };
}

/** The warning's sentences when clearing the device would delete what is not sent yet. */
export function clearWords(left: DeviceLeft): string[] {
  const out: string[] = [];
  if (left.studies) {
    const n = left.studies;
    const { subject, after } = whose(n, left.othersStudies ?? 0, "study", "studies");
    out.push(`${subject} ${plural(n, "is", "are")} not yet received by the PACS${after}: clearing deletes ${plural(n, "it", "them")} from this device, and ${plural(n, "it is", "they are")} not sent.`);
  }
  if (left.replies) {
    const n = left.replies;
    const { subject, after } = whose(n, left.othersReplies ?? 0, "answer to the radiologist", "answers to the radiologist");
    out.push(`${subject} ${plural(n, "is", "are")} not yet sent${after}: clearing deletes ${plural(n, "it", "them")} too.`);
  }
  if (left.cancels) {
    const n = left.cancels;
    const { subject, after } = whose(n, left.othersCancels ?? 0, "cancel", "cancels");
    out.push(
      `${subject} ${plural(n, "has", "have")} not reached the server yet${after}: clearing loses ${plural(n, "it", "them")}, and the server keeps ${plural(n, "that upload", "those uploads")} open until ${plural(n, "it times", "they time")} out.`,
    );
  }
  if (left.ownStarted) {
    const n = left.ownStarted;
    out.push(
      `${n} of your studies ${plural(n, "has", "have")} already started on the server: clearing cancels ${plural(n, "it", "them")} there first; if the server cannot be reached, ${plural(n, "the cancel is", "the cancels are")} lost too.`,
    );
  }
  return out;
}

/** The two choices of that warning: keep what is unsent, or delete it and clear. */
export function clearChoices(left: DeviceLeft): { keep: string; discard: string } {
  const one = left.studies + left.replies + (left.cancels ?? 0) === 1;
  return one ? { keep: "Keep it and do not clear", discard: "Delete it and clear" } : { keep: "Keep them and do not clear", discard: "Delete them and clear" };
}

// Clearing waits this long for the upload engine (page or service worker) to stop.
const UPLOADER_STOP_MS = 5000;
// Everything the app keeps in localStorage starts with this.
const STORAGE_PREFIX = "relaypacs-";

/** What clearing says when an upload engine (the service worker's Background Sync, another
 * tab) still holds the queue after UPLOADER_STOP_MS: nothing was cleared. */
export const UPLOADER_BUSY = {
  message: "The app is still sending a study in the background.",
  hint: "Wait a moment and press Clear local data again.",
} as const;

/** Clear local data: sign out (`discard`: the signed-in user's unsent studies cancelled
 * first, as when signing out; other accounts' cannot be) and delete everything the app
 * keeps on this device, for every user: the queue and its files, reports, answers,
 * dashboard figures, tokens, and its remembered choices. What the server has is not
 * touched. The app shell stays cached (it holds no data).
 *
 * All of it runs once, holding UPLOADER_LOCK, so no uploader writes to the queue meanwhile.
 * When the lock is not free within UPLOADER_STOP_MS, nothing is done (not even the cancels
 * or the push subscription), this page's uploads start again, and it throws an ApiError
 * saying so (UPLOADER_BUSY). */
export async function localDataClear(owner: string, { discard }: { discard: boolean }): Promise<void> {
  // This page's engine stops first (it is then waiting, and lets go of the lock at once);
  // the cancels go out without it (cancelStudy sends each itself).
  liveFor(null);
  stopUploads();
  const clear = async () => {
    if (discard) await discardAll(owner);
    await deviceForget();
    await Promise.all(db.tables.filter((table) => table !== db.auth).map((table) => table.clear()));
    try {
      for (const key of Object.keys(localStorage)) if (key.startsWith(STORAGE_PREFIX)) localStorage.removeItem(key);
    } catch {
      // No storage to clear.
    }
    // The tokens last: the sign-in screen shows once everything else is gone.
    await signOut();
  };
  // Without Web Locks (no secure context) there is no service worker either: this page was
  // the only uploader.
  if (typeof navigator === "undefined" || !navigator.locks) return clear();
  let held = false;
  try {
    await navigator.locks.request(UPLOADER_LOCK, { signal: AbortSignal.timeout(UPLOADER_STOP_MS) }, () => {
      held = true;
      return clear();
    });
  } catch (error) {
    // A failure of the clearing itself is not retried (it may have half run).
    if (held) throw error;
    startUploads(owner);
    liveFor(navigator.onLine ? owner : null);
    throw new ApiError(409, "uploader_busy", UPLOADER_BUSY.message, UPLOADER_BUSY.hint);
  }
}

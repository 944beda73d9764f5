/** The life of a study in the local queue, as an explicit state machine. */

export type StudyState =
  | "preparing" // hashing the files on the device
  | "queued" // ready, waiting for the network or its turn
  | "uploading"
  | "paused"
  | "processing" // all bytes on the server, being checked
  | "forwarding" // the server is sending it to the PACS (or waiting for it)
  | "completed" // the PACS confirmed every instance
  | "needs_attention" // the technician must act: see `error`
  | "cancelling" // cancel asked for: kept on the device until the server confirms it
  | "cancelled";

export type StudyEvent =
  | { type: "prepared" }
  | { type: "start" }
  | { type: "offline" }
  | { type: "pause" }
  | { type: "resume" }
  | { type: "sent" } // every chunk acknowledged and `complete` accepted
  | { type: "server"; state: string }
  | { type: "fail" }
  | { type: "retry" }
  | { type: "cancel" };

export const FINAL_STATES: readonly StudyState[] = ["completed", "cancelled"];

/** Map the server's upload state (docs/upload-api.md) onto the local one. */
export function fromServerState(state: string): StudyState | null {
  switch (state) {
    case "receiving":
      return null; // the client drives that part itself
    case "processing":
      return "processing";
    case "forwarding":
    case "waiting_for_pacs":
      return "forwarding";
    case "completed":
      return "completed";
    case "needs_confirmation":
    case "failed":
      return "needs_attention";
    case "cancelled":
      return "cancelled";
    default:
      return null;
  }
}

/** The next state, or the same state when the event does not apply to it. A cancel is only
 * asked for here ("cancelling"): the engine ends it in "cancelled" once the server confirmed
 * (or in "completed" when the server had already delivered it), and nothing else leaves it,
 * so a cancel tapped offline cannot turn back into an upload. */
export function transition(state: StudyState, event: StudyEvent): StudyState {
  if (event.type === "cancel") return FINAL_STATES.includes(state) ? state : "cancelling";
  switch (state) {
    case "preparing":
      if (event.type === "prepared") return "queued";
      if (event.type === "fail") return "needs_attention";
      return state;
    case "queued":
      if (event.type === "start") return "uploading";
      if (event.type === "pause") return "paused";
      if (event.type === "fail") return "needs_attention";
      if (event.type === "server") return fromServerState(event.state) ?? state;
      return state;
    case "uploading":
      if (event.type === "offline") return "queued";
      if (event.type === "pause") return "paused";
      if (event.type === "sent") return "processing";
      if (event.type === "fail") return "needs_attention";
      if (event.type === "server") return fromServerState(event.state) ?? state;
      return state;
    case "paused":
      if (event.type === "resume") return "queued";
      return state;
    case "processing":
    case "forwarding":
      if (event.type === "server") return fromServerState(event.state) ?? state;
      if (event.type === "fail") return "needs_attention";
      return state;
    case "needs_attention":
      if (event.type === "retry") return "queued";
      if (event.type === "server") return fromServerState(event.state) ?? state;
      return state;
    case "cancelling":
    case "completed":
    case "cancelled":
      return state;
  }
}

/** Whether a study keeps (or gets) its wait note (db.ts `WaitNote`) through `event`: only
 * when the engine backs off ("offline") and the study still waits to be sent. Any other
 * event (start, pause, sent, server, fail, cancel, …) ends the wait it described. */
export function keepsWaitNote(event: StudyEvent, next: StudyState): boolean {
  return event.type === "offline" && (next === "queued" || next === "uploading");
}

/** Whether the uploader should work on a study in this state. */
export function isActive(state: StudyState): boolean {
  return state === "queued" || state === "uploading" || state === "processing" || state === "forwarding" || state === "cancelling";
}

export function stateLabel(state: StudyState, online: boolean): string {
  switch (state) {
    case "preparing":
      return "Preparing files";
    case "queued":
      return online ? "Waiting to upload" : "Waiting for network";
    case "uploading":
      return online ? "Uploading" : "Waiting for network";
    case "paused":
      return "Paused";
    case "processing":
      return "Processing";
    case "forwarding":
      return "Sending to PACS";
    case "completed":
      return "Received by PACS";
    case "needs_attention":
      return "Needs attention";
    case "cancelling":
      return "Cancelling…";
    case "cancelled":
      return "Cancelled";
  }
}

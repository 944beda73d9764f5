import { describe, expect, it } from "vitest";
import { fromServerState, isActive, stateLabel, transition, type StudyState } from "./queueState";

describe("the queue's state machine", () => {
  it("follows a study from the device to the PACS", () => {
    let state: StudyState = "preparing";
    state = transition(state, { type: "prepared" });
    expect(state).toBe("queued");
    state = transition(state, { type: "start" });
    expect(state).toBe("uploading");
    state = transition(state, { type: "sent" });
    expect(state).toBe("processing");
    state = transition(state, { type: "server", state: "forwarding" });
    expect(state).toBe("forwarding");
    state = transition(state, { type: "server", state: "waiting_for_pacs" });
    expect(state).toBe("forwarding");
    state = transition(state, { type: "server", state: "completed" });
    expect(state).toBe("completed");
  });

  it("waits for the network when the connection drops, and pauses on request", () => {
    expect(transition("uploading", { type: "offline" })).toBe("queued");
    expect(transition("uploading", { type: "pause" })).toBe("paused");
    expect(transition("queued", { type: "pause" })).toBe("paused");
    expect(transition("paused", { type: "start" })).toBe("paused");
    expect(transition("paused", { type: "resume" })).toBe("queued");
  });

  it("asks for attention when the server fails or needs confirmation, and retries", () => {
    expect(transition("processing", { type: "server", state: "failed" })).toBe("needs_attention");
    expect(transition("processing", { type: "server", state: "needs_confirmation" })).toBe("needs_attention");
    expect(transition("needs_attention", { type: "retry" })).toBe("queued");
    expect(transition("needs_attention", { type: "server", state: "forwarding" })).toBe("forwarding");
  });

  it("never leaves a final state", () => {
    for (const event of [{ type: "retry" }, { type: "start" }, { type: "cancel" }, { type: "server", state: "failed" }] as const) {
      expect(transition("completed", event)).toBe("completed");
      expect(transition("cancelled", event)).toBe("cancelled");
    }
    expect(transition("uploading", { type: "cancel" })).toBe("cancelling");
  });

  it("keeps a cancel until the engine ends it: nothing turns it back into an upload", () => {
    for (const state of ["preparing", "queued", "uploading", "paused", "processing", "forwarding", "needs_attention"] as const) {
      expect(transition(state, { type: "cancel" })).toBe("cancelling");
    }
    const events = [
      { type: "prepared" },
      { type: "start" },
      { type: "offline" },
      { type: "resume" },
      { type: "sent" },
      { type: "retry" },
      { type: "fail" },
      { type: "cancel" },
      { type: "server", state: "forwarding" },
      { type: "server", state: "failed" },
    ] as const;
    for (const event of events) expect(transition("cancelling", event)).toBe("cancelling");
    expect(isActive("cancelling")).toBe(true);
    expect(stateLabel("cancelling", false)).toBe("Cancelling…");
  });

  it("maps every server state and says each state in words", () => {
    expect(fromServerState("receiving")).toBeNull();
    expect(fromServerState("cancelled")).toBe("cancelled");
    expect(stateLabel("queued", false)).toBe("Waiting for network");
    expect(stateLabel("uploading", false)).toBe("Waiting for network");
    expect(stateLabel("completed", true)).toBe("Received by PACS");
    expect(isActive("paused")).toBe(false);
    expect(isActive("forwarding")).toBe(true);
  });
});

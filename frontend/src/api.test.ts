/** apiFetch's answers to what fetch and the body read can do. */
import { afterEach, describe, expect, it, vi } from "vitest";
import { ApiError, apiFetch } from "./api";

/** fetch answers 200 OK, and reading its body fails with `error`. */
function answerWhoseBodyFails(error: Error): void {
  vi.stubGlobal("fetch", async () => ({
    ok: true,
    status: 200,
    headers: new Headers(),
    json: async () => {
      throw error;
    },
  }));
}

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("apiFetch", () => {
  it("passes on an abort that comes while the answer is read, never as an unreadable answer", async () => {
    answerWhoseBodyFails(new DOMException("The operation was aborted.", "AbortError"));
    const caught = await apiFetch("/x").catch((error: unknown) => error);
    expect((caught as Error).name).toBe("AbortError");
    expect(caught).not.toBeInstanceOf(ApiError);
  });

  it("says an answer that cannot be read is one, with a way on", async () => {
    answerWhoseBodyFails(new SyntaxError("Unexpected token < in JSON"));
    const caught = await apiFetch("/x").catch((error: unknown) => error);
    expect(caught).toBeInstanceOf(ApiError);
    expect((caught as ApiError).code).toBe("bad_response");
    expect((caught as ApiError).message).toBe("The server sent an answer this app cannot read.");
  });

  it("says a refused connection is a lost connection", async () => {
    vi.stubGlobal("fetch", async () => {
      throw new TypeError("Failed to fetch");
    });
    const caught = await apiFetch("/x").catch((error: unknown) => error);
    expect((caught as ApiError).code).toBe("network_unavailable");
  });
});

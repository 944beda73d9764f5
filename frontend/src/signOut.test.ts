/** Clear local data (Settings, "This device"): what it counts as lost, for every account on
 * the device, and the sentences it says before deleting it. Counting is pure; `deviceLeft`
 * reads the real Dexie database (fake-indexeddb in Node). */
import "fake-indexeddb/auto";
import { afterEach, describe, expect, it } from "vitest";
import { db } from "./db";
import { clearChoices, clearWords, deviceLeft, deviceLeftOf, somethingOnDevice } from "./signOut";
import { OWNER, queuedStudy } from "./testkit";

const OTHER = "nurse";
const UPLOAD = "00000000-0000-4000-8000-000000000001";

describe("what clearing the device would lose", () => {
  it("counts every account's unsent studies, answers and cancels, and which are someone else's", () => {
    const left = deviceLeftOf(
      OWNER,
      [
        { owner: OWNER, state: "queued", uploadId: null },
        { owner: OWNER, state: "uploading", uploadId: UPLOAD },
        { owner: OTHER, state: "paused", uploadId: UPLOAD },
        { owner: OWNER, state: "completed", uploadId: UPLOAD },
        { owner: OTHER, state: "cancelled", uploadId: UPLOAD },
        { owner: OTHER, state: "cancelling", uploadId: UPLOAD },
        // Never reached the server: its cancel loses nothing.
        { owner: OWNER, state: "cancelling", uploadId: null },
      ],
      [{ owner: OWNER }, { owner: OTHER }, { owner: OTHER }],
    );
    expect(left).toEqual({ studies: 3, othersStudies: 1, replies: 3, othersReplies: 2, cancels: 1, othersCancels: 1, ownStarted: 1 });
    expect(somethingOnDevice(left)).toBe(true);
  });

  it("finds nothing when every study is finished", () => {
    const left = deviceLeftOf(OWNER, [{ owner: OTHER, state: "completed", uploadId: UPLOAD }], []);
    expect(somethingOnDevice(left)).toBe(false);
    expect(somethingOnDevice({ studies: 0, replies: 0, cancels: 1 })).toBe(true);
  });

  it("says whose they are and that queued cancels are lost", () => {
    const left = { studies: 3, othersStudies: 1, replies: 2, othersReplies: 2, cancels: 1, othersCancels: 0, ownStarted: 1 };
    expect(clearWords(left)).toEqual([
      "3 studies are not yet received by the PACS, 1 of them from another account: clearing deletes them from this device, and they are not sent.",
      "2 answers to the radiologist from other accounts are not yet sent: clearing deletes them too.",
      "1 cancel has not reached the server yet: clearing loses it, and the server keeps that upload open until it times out.",
      "1 of your studies has already started on the server: clearing cancels it there first; if the server cannot be reached, the cancel is lost too.",
    ]);
    expect(clearWords({ studies: 1, othersStudies: 1, replies: 0, cancels: 2, othersCancels: 1 })).toEqual([
      "1 study from another account is not yet received by the PACS: clearing deletes it from this device, and it is not sent.",
      "2 cancels have not reached the server yet, 1 of them from another account: clearing loses them, and the server keeps those uploads open until they time out.",
    ]);
    expect(clearChoices({ studies: 0, replies: 0, cancels: 1 })).toEqual({ keep: "Keep it and do not clear", discard: "Delete it and clear" });
    expect(clearChoices({ studies: 1, replies: 0, cancels: 1 })).toEqual({ keep: "Keep them and do not clear", discard: "Delete them and clear" });
  });
});

describe("deviceLeft", () => {
  afterEach(async () => {
    await Promise.all(db.tables.map((table) => table.clear()));
  });

  it("reads every account's rows on the device", async () => {
    await queuedStudy(1024, 1);
    await queuedStudy(1024, 1, { owner: OTHER });
    await queuedStudy(1024, 1, { owner: OTHER, state: "cancelling", uploadId: UPLOAD });
    await db.replies.add({ owner: OTHER, reportId: 1, answer: "Left side.", createdAt: Date.now(), state: "queued", error: null });
    expect(await deviceLeft(OWNER)).toEqual({ studies: 2, othersStudies: 1, replies: 1, othersReplies: 1, cancels: 1, othersCancels: 1, ownStarted: 0 });
  });
});

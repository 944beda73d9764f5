import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { APP_WORDS, namesApiField, userWords } from "./words";

// The public contract: every code and field name it puts in backticks.
const doc = readFileSync(new URL("../../docs/upload-api.md", import.meta.url), "utf8");
const names = [...new Set([...doc.matchAll(/`([a-z][a-z0-9_.]*)`/g)].map((m) => m[1]!).filter((n) => n.includes("_")))];
// The codes: the table's code column, and the paragraph of errors stored on a failed upload
// (its first sentence up to "While waiting", then the two codes after it).
const table = doc.slice(doc.indexOf("## Error codes"), doc.indexOf("Errors stored on a failed upload"));
const tableCodes = table.split("\n").filter((l) => l.startsWith("| 4") || l.startsWith("| 5")).flatMap((l) => [...l.split("|")[2]!.matchAll(/`([a-z_]+)`/g)].map((m) => m[1]!));
const stored = doc.slice(doc.indexOf("Errors stored on a failed upload"), doc.indexOf("## Inputs"));
// "see `rejected_files`", "lists in `missing_chunks`": fields, not codes.
const fieldsNamed = new Set(["rejected_files", "missing_chunks"]);
const storedCodes = [...stored.matchAll(/`([a-z]+(?:_[a-z]+)+)`/g)].map((m) => m[1]!).filter((n) => !fieldsNamed.has(n));
const codes = [...new Set([...tableCodes, ...storedCodes])];

function leaked(text: string): string[] {
  return names.filter((n) => new RegExp(`\\b${n.replace(/\./g, "\\.")}\\b`).test(text));
}

describe("what the user is told for every error the API can return", () => {
  it("reads the contract's codes", () => {
    expect(codes).toEqual(expect.arrayContaining(["invalid_files", "nothing_to_retry", "possible_duplicate", "account_pending_approval", "archive_encrypted", "pacs_not_listing"]));
    expect(names).toEqual(expect.arrayContaining(["rejected_files", "allow_partial", "force_upload"]));
  });

  it.each(codes)("%s: the app has its own words, and no code or field name reaches the user", (code) => {
    expect(APP_WORDS[code], code).toBeDefined();
    // The server's words at their worst: naming the code and fields.
    const words = userWords(code, `Failed (${code}); see rejected_files.`, "Upload again with allow_partial or force_upload.");
    expect(words.message).not.toBe("");
    expect(leaked(`${words.message} ${words.hint}`)).toEqual([]);
    expect(leaked(`${APP_WORDS[code]!.message} ${APP_WORDS[code]!.hint}`)).toEqual([]);
  });

  it("keeps the server's own sentences when they are plain words (they carry the details)", () => {
    const words = userWords("archive_too_large", "The archives in this upload unpack to more than 4096 MiB together.", "Send the study in several smaller uploads.");
    expect(words).toEqual({ message: "The archives in this upload unpack to more than 4096 MiB together.", hint: "Send the study in several smaller uploads." });
  });

  it("says what the app offers for damaged files, whatever the server wrote", () => {
    const words = userWords("invalid_files", "2 of 15 files are damaged.", "See rejected_files for each file and reason.");
    expect(words.hint).toContain("send the other files");
    expect(namesApiField(words.hint)).toBe(false);
  });

  it("says a wrong password in one sentence", () => {
    const words = userWords("invalid_credentials", "The username or password is not correct, or the account's email address is not confirmed yet.", "Check both and try again. A new account signs in once the link in its confirmation email is opened; you can ask for that email again. If you forgot your password, use 'Forgot your password?'.");
    expect(words.hint).toBe("");
    expect(words.message.split(/[.!?](\s|$)/).filter((s) => s.trim()).length).toBe(1);
  });

  it("never passes an unknown code's jargon through", () => {
    const words = userWords("something_new", "see missing_chunks", "");
    expect(leaked(`${words.message} ${words.hint}`)).toEqual([]);
  });
});

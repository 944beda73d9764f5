/** What the account forms show when the server says no: its message and hint, the password
 * rules a new password breaks, and the problems with single fields. */
import { ApiError } from "./api";
import type { UserError } from "./db";

export interface FormError extends UserError {
  /** Each password rule broken (`weak_password`). */
  problems: string[];
  /** Field name -> what is wrong with it (`invalid_request`). */
  fields: Record<string, string[]>;
}

function strings(value: unknown): string[] {
  if (typeof value === "string") return [value];
  if (Array.isArray(value)) return value.flatMap(strings);
  return [];
}

/** `offline` replaces the generic network message: what cannot be done without the network. */
export function formError(error: unknown, offline = "This needs the network, and the server cannot be reached."): FormError {
  if (error instanceof ApiError) {
    if (error.status === 0) {
      return { code: error.code, message: offline, hint: "Connect to the clinic network or mobile data and try again.", problems: [], fields: {} };
    }
    const fields: Record<string, string[]> = {};
    const raw = error.body.fields;
    if (raw && typeof raw === "object" && !Array.isArray(raw)) {
      for (const [name, value] of Object.entries(raw as Record<string, unknown>)) {
        const messages = strings(value);
        if (messages.length) fields[name] = messages;
      }
    }
    return { code: error.code, message: error.message, hint: error.hint, problems: strings(error.body.problems), fields };
  }
  return {
    code: "app_error",
    message: "Something went wrong in the app.",
    hint: "Try again; if it happens again, tell your administrator.",
    problems: [],
    fields: {},
  };
}

/** The message without the rules it repeats, when the rules are listed apart: the server
 * writes "This password is not strong enough: rule one. rule two." */
export function messageBeforeProblems(error: FormError): string {
  const first = error.problems[0];
  if (!first || !error.problems.every((p) => error.message.includes(p))) return error.message;
  const at = error.message.indexOf(first);
  return at > 0 ? error.message.slice(0, at).trim() : error.message;
}

/** The problems of one field, as one sentence, or "" when it has none. */
export function fieldProblem(error: FormError | null, name: string): string {
  return error?.fields[name]?.join(" ") ?? "";
}

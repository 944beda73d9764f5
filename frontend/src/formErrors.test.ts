import { describe, expect, it } from "vitest";
import { ApiError } from "./api";
import { fieldProblem, formError, messageBeforeProblems } from "./formErrors";

describe("form errors", () => {
  it("keeps the server's message and hint and lists each password rule broken", () => {
    const error = formError(
      new ApiError(400, "weak_password", "This password is not strong enough: This password is too short. This password is too common.", "Use at least 12 characters.", {
        code: "weak_password",
        problems: ["This password is too short.", "This password is too common."],
      }),
    );
    expect(error.message).toContain("not strong enough");
    expect(error.hint).toBe("Use at least 12 characters.");
    expect(error.problems).toEqual(["This password is too short.", "This password is too common."]);
    expect(messageBeforeProblems(error)).toBe("This password is not strong enough:");
  });

  it("keeps the whole message when it does not repeat the rules", () => {
    const error = formError(new ApiError(400, "weak_password", "Too weak.", "", { problems: ["Too short."] }));
    expect(messageBeforeProblems(error)).toBe("Too weak.");
  });

  it("gives each field its own problems", () => {
    const error = formError(
      new ApiError(400, "invalid_request", "Some of the information sent is missing or not valid.", "Correct the fields.", {
        fields: { email: ["Enter a valid email address."], username: ["This field is required.", "Too long."] },
      }),
    );
    expect(fieldProblem(error, "email")).toBe("Enter a valid email address.");
    expect(fieldProblem(error, "username")).toBe("This field is required. Too long.");
    expect(fieldProblem(error, "password")).toBe("");
    expect(fieldProblem(null, "email")).toBe("");
  });

  it("says what needs the network when the server cannot be reached", () => {
    const error = formError(new ApiError(0, "network_unavailable", "The server cannot be reached.", "The study stays queued."), "Signing up needs the network.");
    expect(error.message).toBe("Signing up needs the network.");
    expect(error.hint).not.toContain("study");
  });

  it("turns a bug in the app into words, not a stack trace", () => {
    const error = formError(new TypeError("x is undefined"));
    expect(error.code).toBe("app_error");
    expect(error.message).not.toContain("undefined");
  });
});

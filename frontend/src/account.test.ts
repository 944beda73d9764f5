import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  backupCodesText,
  chunkSizeLabel,
  deviceName,
  notSendingNotice,
  forgetAwaitingConfirmation,
  offersConfirmationResend,
  rememberAwaitingConfirmation,
  otpauthSecret,
  profileChanges,
  profileSavedMessage,
  resendVerification,
  signedInFetch,
  type Profile,
} from "./account";
import { db } from "./db";

const profile: Profile = {
  username: "tech",
  role: "clinician",
  facility: null,
  email: "Tech@Clinic.example",
  pending_email: "",
  full_name: "Tess Tech",
  email_verified: true,
  twofactor_enabled: false,
};

describe("account helpers", () => {
  it("sends only what changed in the profile", () => {
    expect(profileChanges(profile, { fullName: " Tess Tech ", email: "tech@clinic.example" })).toEqual({});
    expect(profileChanges(profile, { fullName: "Tess T. Tech", email: "Tech@Clinic.example" })).toEqual({ full_name: "Tess T. Tech" });
    expect(profileChanges(profile, { fullName: "Tess Tech", email: " new@clinic.example " })).toEqual({ email: "new@clinic.example" });
  });

  it("labels chunk sizes in KiB and MiB", () => {
    expect(chunkSizeLabel(null)).toBe("Server default");
    expect(chunkSizeLabel(256 * 1024)).toBe("256 KiB");
    expect(chunkSizeLabel(4 * 1024 * 1024)).toBe("4 MiB");
  });

  it("reads the secret of an otpauth URI", () => {
    expect(otpauthSecret("otpauth://totp/RelayPACS:tech?secret=JBSWY3DPEHPK3PXP&algorithm=SHA1&digits=6&period=30")).toBe("JBSWY3DPEHPK3PXP");
    expect(otpauthSecret("not a uri")).toBe("");
  });

  it("names devices from their user agent", () => {
    expect(deviceName("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36")).toBe("Chrome on Android");
    expect(deviceName("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")).toBe("Safari on iOS");
    expect(deviceName("python-requests/2.32")).toBe("python-requests/2.32");
    expect(deviceName("")).toBe("Unknown device");
  });

  it("writes the backup codes one a line under a title", () => {
    const text = backupCodesText(["aa11", "bb22"], "tech");
    expect(text.split("\n")).toContain("aa11");
    expect(text).toContain("tech");
  });
});

function jwt(expSecondsFromNow: number): string {
  const payload = btoa(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + expSecondsFromNow }));
  return `h.${payload.replace(/=+$/, "")}.s`;
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

describe("signed-in calls", () => {
  beforeEach(async () => {
    await db.auth.clear();
  });
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("refreshes a refused access token once and repeats the call", async () => {
    const stale = jwt(3600);
    const fresh = jwt(3600) + "x";
    await db.auth.put({ key: "current", username: "tech", access: stale, refresh: "r1", expired: false });
    const fetch = vi
      .fn()
      .mockResolvedValueOnce(json(401, { error: { code: "authentication_failed", message: "Your sign-in could not be checked.", hint: "" } }))
      .mockResolvedValueOnce(json(200, { access: fresh, refresh: "r2" }))
      .mockResolvedValueOnce(json(200, { enabled: false, backup_codes_left: 0 }));
    vi.stubGlobal("fetch", fetch);
    expect(await signedInFetch("/auth/2fa")).toEqual({ enabled: false, backup_codes_left: 0 });
    expect(fetch.mock.calls[2]![1].headers.Authorization).toBe(`Bearer ${fresh}`);
  });

  it("passes the server's refusal on when it is not about the token", async () => {
    await db.auth.put({ key: "current", username: "tech", access: jwt(3600), refresh: "r1", expired: false });
    vi.stubGlobal("fetch", vi.fn().mockResolvedValue(json(400, { error: { code: "invalid_otp", message: "The code is not correct.", hint: "Check the time." } })));
    await expect(signedInFetch("/auth/2fa/confirm", { method: "POST", json: { otp: "1" } })).rejects.toMatchObject({ code: "invalid_otp", status: 400 });
  });
});

describe("signing in to an account whose email is not confirmed", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("offers the confirmation email again only for an account registered on this device and not confirmed since", () => {
    const store = new Map<string, string>();
    vi.stubGlobal("localStorage", { getItem: (k: string) => store.get(k) ?? null, setItem: (k: string, v: string) => store.set(k, v) });
    // A wrong password on an account that never needed a confirmation email: no offer.
    expect(offersConfirmationResend("invalid_credentials", "tech")).toBe(false);
    rememberAwaitingConfirmation("NewNurse");
    expect(offersConfirmationResend("invalid_credentials", "newnurse ")).toBe(true);
    expect(offersConfirmationResend("invalid_credentials", "tech")).toBe(false);
    // Other refusals need no new email.
    expect(offersConfirmationResend("invalid_otp", "newnurse")).toBe(false);
    expect(offersConfirmationResend(undefined, "newnurse")).toBe(false);
    forgetAwaitingConfirmation("newnurse");
    expect(offersConfirmationResend("invalid_credentials", "newnurse")).toBe(false);
  });

  it("asks for the email again with the address alone, as the API expects", async () => {
    const fetch = vi.fn().mockResolvedValue(json(202, { detail: "If an unconfirmed account uses this address, an email is on its way." }));
    vi.stubGlobal("fetch", fetch);
    expect(await resendVerification("ada@clinic.example")).toEqual({ detail: "If an unconfirmed account uses this address, an email is on its way." });
    const [url, init] = fetch.mock.calls[0]!;
    expect(url).toBe("/api/v1/auth/verify-email/resend");
    expect(init.method).toBe("POST");
    expect(init.headers["Content-Type"]).toBe("application/json");
    expect(JSON.parse(init.body)).toEqual({ email: "ada@clinic.example" });
    expect(init.headers.Authorization).toBeUndefined();
  });
});

describe("saving the profile", () => {
  it("promises an email to a new address, not a confirmation link the server may not send", () => {
    const saved = { ...profile, pending_email: "new@clinic.example" };
    const message = profileSavedMessage(saved, true);
    expect(message).toContain("An email is on its way to new@clinic.example");
    expect(message).not.toContain("A confirmation link is on its way");
    expect(profileSavedMessage(profile, false)).toBe("Saved.");
  });
});

describe("notSendingNotice", () => {
  it("tells radiologists and auditors why there is no upload, and nobody else", () => {
    expect(notSendingNotice("radiologist")).toContain("radiologist account");
    expect(notSendingNotice("auditor")).toContain("auditor account");
    for (const role of ["clinician", "radiographer", "admin"]) expect(notSendingNotice(role)).toBeNull();
  });
});

/** The account API (accounts/apis.py): registration, email links, and the signed-in user's
 * own settings. Every call needs the network; failures are ApiErrors as in api.ts. */
import { ApiError, apiFetch, type RequestOptions } from "./api";
import { accessToken } from "./auth";
import type { ServiceLevel } from "./db";

/** A call as the signed-in user; an access token the server refused is refreshed once. */
export async function signedInFetch<T>(path: string, options: RequestOptions = {}): Promise<T> {
  try {
    return await apiFetch<T>(path, { ...options, token: await accessToken() });
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401 || error.code === "sign_in_required") throw error;
    // Refused (revoked elsewhere or expired early): refresh, which marks the session expired
    // and sends the user to the sign-in screen when the refresh token is refused too.
    return apiFetch<T>(path, { ...options, token: await accessToken(true) });
  }
}

interface Accepted {
  detail: string;
}

export function register(input: { username: string; email: string; fullName: string; password: string }): Promise<unknown> {
  return apiFetch("/auth/register", {
    method: "POST",
    json: { username: input.username, email: input.email, full_name: input.fullName, password: input.password },
  });
}

export function verifyEmail(token: string): Promise<{ username: string; email_verified: boolean }> {
  return apiFetch("/auth/verify-email", { method: "POST", json: { token } });
}

// Usernames registered on this device whose email address was not confirmed here yet.
const AWAITING_KEY = "relaypacs-awaiting-confirmation";

function awaiting(): string[] {
  try {
    const value: unknown = JSON.parse(localStorage.getItem(AWAITING_KEY) ?? "[]");
    return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : [];
  } catch {
    return [];
  }
}

/** Remember that `username` was registered here and waits for its confirmation email. */
export function rememberAwaitingConfirmation(username: string): void {
  const name = username.trim().toLowerCase();
  if (!name) return;
  try {
    localStorage.setItem(AWAITING_KEY, JSON.stringify([...awaiting().filter((u) => u !== name), name].slice(-5)));
  } catch {
    // No storage: the sign-in screen then offers the resend as a link only.
  }
}

export function forgetAwaitingConfirmation(username: string): void {
  try {
    localStorage.setItem(AWAITING_KEY, JSON.stringify(awaiting().filter((u) => u !== username.trim().toLowerCase())));
  } catch {
    // Nothing stored.
  }
}

/** Whether the sign-in screen offers the confirmation email again under its error: the
 * server answers an unconfirmed address exactly like a wrong password
 * (`invalid_credentials`), so the offer is made only for an account registered on this
 * device and not confirmed here since (elsewhere a link on the screen leads to it). */
export function offersConfirmationResend(code: string | undefined, username = ""): boolean {
  return code === "invalid_credentials" && awaiting().includes(username.trim().toLowerCase());
}

export function resendVerification(email: string): Promise<Accepted> {
  return apiFetch("/auth/verify-email/resend", { method: "POST", json: { email } });
}

export function requestPasswordReset(email: string): Promise<Accepted> {
  return apiFetch("/auth/password-reset", { method: "POST", json: { email } });
}

export function confirmPasswordReset(input: { uid: string; token: string; newPassword: string }): Promise<void> {
  return apiFetch("/auth/password-reset/confirm", {
    method: "POST",
    json: { uid: input.uid, token: input.token, new_password: input.newPassword },
  });
}

export interface Profile {
  username: string;
  role: string;
  facility: { code: string; name: string } | null;
  email: string;
  pending_email: string;
  full_name: string;
  email_verified: boolean;
  twofactor_enabled: boolean;
  /** A self-registered account waits for an administrator before it can send studies. */
  approval?: "pending" | "approved";
}

export function getProfile(): Promise<Profile> {
  return signedInFetch("/auth/me");
}

/** What the main screen says instead of the upload button to a role that does not send
 * studies (the server refuses them too); null for the roles that send. */
export function notSendingNotice(role: string): string | null {
  if (role === "radiologist") {
    return "This is a radiologist account: it reviews studies and does not send them, so there is no upload here. To send studies, ask your administrator for a clinician or radiographer account.";
  }
  if (role === "auditor") {
    return "This is an auditor account: it reads the audit trail and does not send studies, so there is no upload here. Ask your administrator if you need to send studies.";
  }
  return null;
}

export interface Home {
  /** Whether this account sends studies (the upload button). */
  sends: boolean;
  /** What the start screen says this account does, when it is not only sending. */
  text: string;
  /** Where its work is, when that page exists. */
  link: { href: string; label: string } | null;
}

/** Each role's start screen: what the account can do here and where its work is. Only
 * pages that exist are linked; what is still being built is said in one sentence. */
export function homeFor(profile: Pick<Profile, "role" | "approval">): Home {
  if (profile.approval === "pending") {
    return { sends: false, text: "Your account is waiting for an administrator's approval. Once it is approved, you send studies from here.", link: null };
  }
  if (profile.role === "radiologist") {
    return { sends: false, text: "This radiologist account reads and reports studies; it does not send them. Your worklist of studies to report opens here when it is ready.", link: null };
  }
  if (profile.role === "auditor") {
    return { sends: false, text: "This auditor account reviews who did what; it does not send studies. The audit export opens here when it is ready.", link: null };
  }
  if (profile.role === "admin") {
    return { sends: true, text: "You manage users, facilities and the PACS in the administration site, and can send studies here.", link: { href: "/admin/", label: "Open the administration site" } };
  }
  return { sends: true, text: "", link: null };
}

/** Send only what changed; a new email address needs the current password. */
export function updateProfile(changes: { full_name?: string; email?: string; current_password?: string }): Promise<Profile> {
  return signedInFetch("/auth/me", { method: "PATCH", json: changes });
}

/** Returns how many other devices were signed out. */
export async function changePassword(currentPassword: string, newPassword: string): Promise<number> {
  const answer = await signedInFetch<{ revoked: number }>("/auth/password", {
    method: "POST",
    json: { current_password: currentPassword, new_password: newPassword },
  });
  return answer.revoked;
}

export interface TwoFactorStatus {
  enabled: boolean;
  backup_codes_left: number;
}

export interface TwoFactorEnrolment {
  otpauth_uri: string;
  qr_svg: string;
}

export function twoFactorStatus(): Promise<TwoFactorStatus> {
  return signedInFetch("/auth/2fa");
}

export function twoFactorSetup(password: string): Promise<TwoFactorEnrolment> {
  return signedInFetch("/auth/2fa/setup", { method: "POST", json: { password } });
}

export async function twoFactorConfirm(otp: string): Promise<string[]> {
  const answer = await signedInFetch<{ backup_codes: string[] }>("/auth/2fa/confirm", { method: "POST", json: { otp } });
  return answer.backup_codes;
}

export function twoFactorDisable(otp: string): Promise<void> {
  return signedInFetch("/auth/2fa/disable", { method: "POST", json: { otp } });
}

export interface DeviceSession {
  id: string;
  user_agent: string;
  ip_address: string | null;
  created_at: string;
  last_seen_at: string;
  current: boolean;
}

export function listSessions(): Promise<DeviceSession[]> {
  return signedInFetch("/auth/sessions");
}

export function revokeSession(id: string): Promise<void> {
  return signedInFetch(`/auth/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
}

/** Sign out every other device; returns how many were. */
export async function revokeOtherSessions(): Promise<number> {
  const answer = await signedInFetch<{ revoked: number }>("/auth/sessions/revoke-all", { method: "POST", json: { keep_current: true } });
  return answer.revoked;
}

export interface Preferences {
  default_service_level: ServiceLevel;
  /** Bytes; null: the server's default. */
  default_chunk_size: number | null;
  duplicate_detection: boolean;
}

export function getPreferences(): Promise<Preferences> {
  return signedInFetch("/auth/me/preferences");
}

export function updatePreferences(changes: Partial<Preferences>): Promise<Preferences> {
  return signedInFetch("/auth/me/preferences", { method: "PATCH", json: changes });
}

export function exportMyData(): Promise<unknown> {
  return signedInFetch("/auth/me/export");
}

export const SERVICE_LEVELS: { value: ServiceLevel; label: string }[] = [
  { value: "routine", label: "Routine" },
  { value: "urgent", label: "Urgent" },
  { value: "emergency", label: "Emergency" },
  { value: "stat", label: "STAT" },
];

/** The chunk sizes offered, within the server's 256 KiB to 16 MiB. */
export const CHUNK_SIZES = [256 * 1024, 512 * 1024, 1024 * 1024, 2 * 1024 * 1024, 4 * 1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024];

export function chunkSizeLabel(bytes: number | null): string {
  if (bytes === null) return "Server default";
  return bytes >= 1024 * 1024 ? `${bytes / (1024 * 1024)} MiB` : `${bytes / 1024} KiB`;
}

/** The piece size in words, for the Advanced part of the upload settings. */
export function pieceSizeWords(bytes: number | null): string {
  if (bytes === null) return "Chosen for each connection (recommended)";
  const size = bytes >= 1024 * 1024 ? `${bytes / (1024 * 1024)} MB` : `${bytes / 1024} KB`;
  if (bytes <= 512 * 1024) return `Smaller pieces for very weak networks (${size})`;
  if (bytes <= 2 * 1024 * 1024) return `Medium pieces for ordinary mobile networks (${size})`;
  return `Larger pieces for fast, steady networks (${size})`;
}

/** The fields of a profile form that differ from the profile, ready for PATCH. */
export function profileChanges(profile: Profile, form: { fullName: string; email: string }): { full_name?: string; email?: string } {
  const changes: { full_name?: string; email?: string } = {};
  if (form.fullName.trim() !== profile.full_name) changes.full_name = form.fullName.trim();
  if (form.email.trim().toLowerCase() !== profile.email.toLowerCase()) changes.email = form.email.trim();
  return changes;
}

/** What the profile form says once saved. A new address gets an email either way (a
 * confirmation link, or its owner a notice when another account uses it), so the words
 * promise no more than that. */
export function profileSavedMessage(saved: Profile, emailChanged: boolean): string {
  return emailChanged && saved.pending_email
    ? `Saved. An email is on its way to ${saved.pending_email}; your address changes once you open the confirmation link in it.`
    : "Saved.";
}

/** The backup codes as a text file a person can print or keep. */
export function backupCodesText(codes: string[], username: string): string {
  return [`RelayPACS backup codes for ${username}`, "Each code signs in once, when your phone is not at hand.", "", ...codes, ""].join("\n");
}

/** The secret an authenticator app needs when the QR code cannot be scanned. */
export function otpauthSecret(uri: string): string {
  try {
    return new URL(uri).searchParams.get("secret") ?? "";
  } catch {
    return "";
  }
}

/** A short description of a device from its browser's user agent. */
export function deviceName(userAgent: string): string {
  if (!userAgent) return "Unknown device";
  const browser = /Edg\//.test(userAgent)
    ? "Edge"
    : /(Chrome|Chromium)\//.test(userAgent)
      ? "Chrome"
      : /Firefox\//.test(userAgent)
        ? "Firefox"
        : /Safari\//.test(userAgent)
          ? "Safari"
          : "";
  const system = /Android/.test(userAgent)
    ? "Android"
    : /iPhone|iPad/.test(userAgent)
      ? "iOS"
      : /Windows/.test(userAgent)
        ? "Windows"
        : /Mac OS X/.test(userAgent)
          ? "macOS"
          : /Linux/.test(userAgent)
            ? "Linux"
            : "";
  const name = [browser, system].filter(Boolean).join(" on ");
  return name || userAgent.slice(0, 60);
}

/** Offer `content` as a file download. */
export function saveFile(name: string, content: string, type: string): void {
  const url = URL.createObjectURL(new Blob([content], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

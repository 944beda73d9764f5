/** The signed-in user's own settings: profile, password, two-step sign-in, signed-in
 * devices, upload preferences, a copy of their data, and this device's own (notifications
 * when the app is closed, storage used, clear local data, the app's version). Each section loads and saves on its
 * own, so one failing does not hide the others. */
import { useCallback, useEffect, useState, type FormEvent, type ReactNode } from "react";
import {
  backupCodesText,
  changePassword,
  CHUNK_SIZES,
  deviceName,
  exportMyData,
  getPreferences,
  getProfile,
  listSessions,
  homeFor,
  otpauthSecret,
  pieceSizeWords,
  profileChanges,
  profileSavedMessage,
  revokeOtherSessions,
  revokeSession,
  saveFile,
  SERVICE_LEVELS,
  twoFactorConfirm,
  twoFactorDisable,
  twoFactorSetup,
  twoFactorStatus,
  updatePreferences,
  updateProfile,
  type DeviceSession,
  type Preferences,
  type Profile,
  type TwoFactorEnrolment,
  type TwoFactorStatus,
} from "./account";
import { formError, type FormError } from "./formErrors";
import { version as APP_VERSION } from "../package.json";
import { pushDisable, pushEnable, pushStatus, PUSH_WORDS, type PushState } from "./push";
import { navigate } from "./router";
import { PASSWORD_HELP } from "./AccountScreens";
import { INSECURE_NOTICE } from "./secure";
import { clearChoices, clearWords, deviceLeft, localDataClear, somethingOnDevice, type DeviceLeft } from "./signOut";
import { formatBytes } from "./studies";
import { ErrorBox, Field, Notice, useFormAction, useHeadingFocus } from "./ui";

const ROLE_NAMES: Record<string, string> = { clinician: "Clinician", radiographer: "Radiographer", radiologist: "Radiologist", admin: "Administrator", auditor: "Auditor" };

const OFFLINE = "Settings need the network, and the server cannot be reached.";

/** Load once (and again on `reload`); errors become what the form shows. */
function useLoad<T>(load: () => Promise<T>) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<FormError | null>(null);
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    let live = true;
    load().then(
      (value) => {
        if (!live) return;
        setData(value);
        setError(null);
      },
      (e: unknown) => live && setError(formError(e, OFFLINE)),
    );
    return () => {
      live = false;
    };
  }, [load, generation]);
  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { data, setData, error, reload };
}

/** One part of a group, with its own heading (and its own test id). */
function Section({ id, title, children }: { id: string; title: string; children: ReactNode }) {
  return (
    <section className="section" aria-labelledby={`${id}-heading`} data-testid={id}>
      <h3 id={`${id}-heading`}>{title}</h3>
      {children}
    </section>
  );
}

/** A group of settings (Profile, Security, Devices, Upload, This device): at most one
 * filled button in it at rest. */
function Group({ id, title, children }: { id: string; title: string; children: ReactNode }) {
  return (
    <section className="group" aria-labelledby={`${id}-group`} data-testid={`group-${id}`}>
      <h2 id={`${id}-group`}>{title}</h2>
      {children}
    </section>
  );
}

function LoadFailed({ error, onRetry }: { error: FormError; onRetry: () => void }) {
  return (
    <>
      <ErrorBox error={error} />
      <div className="actions">
        <button type="button" onClick={onRetry}>
          Try again
        </button>
      </div>
    </>
  );
}

function ProfileSection() {
  const { data: profile, setData, error: loadError, reload } = useLoad(getProfile);
  const [form, setForm] = useState<{ fullName: string; email: string } | null>(null);
  const [currentPassword, setCurrentPassword] = useState("");
  const action = useFormAction(OFFLINE);
  useEffect(() => {
    if (profile) setForm({ fullName: profile.full_name, email: profile.email });
  }, [profile]);

  if (loadError && !profile) return <LoadFailed error={loadError} onRetry={reload} />;
  if (!profile || !form) return <p className="note">Loading…</p>;
  const changes = profileChanges(profile, form);
  const emailChanges = changes.email !== undefined;

  function submit(event: FormEvent) {
    event.preventDefault();
    void action.run(async () => {
      if (!changes.full_name && !changes.email) return "Nothing to save: the profile is unchanged.";
      const saved: Profile = await updateProfile(emailChanges ? { ...changes, current_password: currentPassword } : changes);
      setData(saved);
      setCurrentPassword("");
      return profileSavedMessage(saved, emailChanges);
    });
  }

  return (
    <form onSubmit={submit} className="form">
      <dl className="facts">
        <dt>Username</dt>
        <dd data-testid="profile-username">{profile.username}</dd>
        <dt>Role</dt>
        <dd>{ROLE_NAMES[profile.role] ?? profile.role}</dd>
        {profile.facility && (
          <>
            <dt>Facility</dt>
            <dd>{profile.facility.name}</dd>
          </>
        )}
      </dl>
      <Field label="Full name" name="full_name" autoComplete="name" error={action.error} value={form.fullName} onChange={(e) => setForm({ ...form, fullName: e.target.value })} />
      <Field
        label="Email"
        name="email"
        type="email"
        autoComplete="email"
        error={action.error}
        value={form.email}
        onChange={(e) => setForm({ ...form, email: e.target.value })}
        required
        help={profile.pending_email ? `Waiting for confirmation: ${profile.pending_email}` : profile.email_verified ? "Confirmed." : "Not confirmed yet."}
      />
      {emailChanges && (
        <Field
          label="Current password"
          name="current_password"
          type="password"
          autoComplete="current-password"
          error={action.error}
          value={currentPassword}
          onChange={(e) => setCurrentPassword(e.target.value)}
          required
          help="Changing the email address needs your password."
        />
      )}
      <ErrorBox error={action.error} />
      <Notice>{action.done}</Notice>
      <div className="actions">
        <button className="primary" type="submit" disabled={action.busy}>
          Save profile
        </button>
      </div>
    </form>
  );
}

function PasswordSection({ onOthersSignedOut }: { onOthersSignedOut: () => void }) {
  const [open, setOpen] = useState(false);
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [repeat, setRepeat] = useState("");
  const action = useFormAction(OFFLINE);
  function submit(event: FormEvent) {
    event.preventDefault();
    if (next !== repeat) {
      action.setError({ code: "passwords_differ", message: "The two new passwords are not the same.", hint: "Type the new password twice, exactly alike.", problems: [], fields: {} });
      return;
    }
    void action.run(async () => {
      const revoked = await changePassword(current, next);
      setCurrent("");
      setNext("");
      setRepeat("");
      onOthersSignedOut();
      return `Your password is changed. ${revoked === 1 ? "1 other device was" : `${revoked} other devices were`} signed out.`;
    });
  }
  if (!open && !action.done) {
    return (
      <div className="actions">
        <button type="button" className="primary" onClick={() => setOpen(true)}>
          Change your password
        </button>
      </div>
    );
  }
  return (
    <form onSubmit={submit} className="form">
      <Field label="Current password" name="current_password" type="password" autoComplete="current-password" error={action.error} value={current} onChange={(e) => setCurrent(e.target.value)} required />
      <Field label="New password" name="new_password" type="password" autoComplete="new-password" error={action.error} value={next} onChange={(e) => setNext(e.target.value)} required help={PASSWORD_HELP} />
      <Field label="New password again" name="repeat" type="password" autoComplete="new-password" value={repeat} onChange={(e) => setRepeat(e.target.value)} required />
      <p className="note">Changing the password signs out every other device.</p>
      <ErrorBox error={action.error} />
      <Notice>{action.done}</Notice>
      <div className="actions">
        <button className="primary" type="submit" disabled={action.busy}>
          Change password
        </button>
      </div>
    </form>
  );
}

function TwoFactorSection({ username }: { username: string }) {
  const { data: status, error: loadError, reload } = useLoad<TwoFactorStatus>(twoFactorStatus);
  const [enrolment, setEnrolment] = useState<TwoFactorEnrolment | null>(null);
  const [codes, setCodes] = useState<string[] | null>(null);
  const [password, setPassword] = useState("");
  const [otp, setOtp] = useState("");
  const [asking, setAsking] = useState(false);
  const action = useFormAction(OFFLINE);

  if (loadError && !status) return <LoadFailed error={loadError} onRetry={reload} />;
  if (!status) return <p className="note">Loading…</p>;

  if (codes) {
    return (
      <div className="form">
        <Notice>Two-step sign-in is on.</Notice>
        <p>
          <strong>Keep these backup codes somewhere safe.</strong> Each one signs you in once when your phone is not at hand. They are shown only now.
        </p>
        <ol className="codes" data-testid="backup-codes">
          {codes.map((c) => (
            <li key={c}>
              <code>{c}</code>
            </li>
          ))}
        </ol>
        <Notice>{action.done}</Notice>
        <div className="actions">
          <button
            type="button"
            onClick={() =>
              void action.run(async () => {
                try {
                  await navigator.clipboard.writeText(codes.join("\n"));
                } catch {
                  return "This browser does not allow copying here: download the codes or write them down.";
                }
                return "The codes are copied.";
              })
            }
          >
            Copy the codes
          </button>
          <button type="button" onClick={() => saveFile("relaypacs-backup-codes.txt", backupCodesText(codes, username), "text/plain")}>
            Download the codes
          </button>
          <button
            type="button"
            className="primary"
            onClick={() => {
              setCodes(null);
              reload();
            }}
          >
            I have saved them
          </button>
        </div>
        <ErrorBox error={action.error} />
      </div>
    );
  }

  if (enrolment) {
    const secret = otpauthSecret(enrolment.otpauth_uri);
    const confirm = (event: FormEvent) => {
      event.preventDefault();
      void action.run(async () => {
        setCodes(await twoFactorConfirm(otp.trim()));
        setEnrolment(null);
        setOtp("");
        return "";
      });
    };
    return (
      <form onSubmit={confirm} className="form">
        <p>Scan this QR code with an authenticator app on your phone, then type the 6-digit code the app shows.</p>
        <img className="qr" src={`data:image/svg+xml;charset=utf-8,${encodeURIComponent(enrolment.qr_svg)}`} alt="QR code to scan with the authenticator app" width={200} height={200} />
        <details>
          <summary>Cannot scan the code?</summary>
          <p>Type this key into the app:</p>
          <p>
            <code className="secret" data-testid="otpauth-secret">
              {secret}
            </code>
          </p>
          <p>Or open this address on the phone:</p>
          <p>
            <code className="secret" data-testid="otpauth-uri">
              {enrolment.otpauth_uri}
            </code>
          </p>
        </details>
        <Field label="Code from the app" name="otp" inputMode="numeric" autoComplete="one-time-code" error={action.error} value={otp} onChange={(e) => setOtp(e.target.value)} required autoFocus />
        <ErrorBox error={action.error} />
        <div className="actions">
          <button className="primary" type="submit" disabled={action.busy}>
            Turn on two-step sign-in
          </button>
          <button type="button" onClick={() => setEnrolment(null)}>
            Cancel
          </button>
        </div>
      </form>
    );
  }

  if (status.enabled) {
    const disable = (event: FormEvent) => {
      event.preventDefault();
      void action.run(async () => {
        await twoFactorDisable(otp.trim());
        setOtp("");
        reload();
        return "Two-step sign-in is off.";
      });
    };
    return (
      <form onSubmit={disable} className="form">
        <p data-testid="twofactor-status">
          <strong>On.</strong> {status.backup_codes_left === 1 ? "1 backup code left." : `${status.backup_codes_left} backup codes left.`}
        </p>
        <Notice>{action.done}</Notice>
        <Field label="Code to turn it off" name="otp" inputMode="numeric" autoComplete="one-time-code" error={action.error} value={otp} onChange={(e) => setOtp(e.target.value)} required help="The code your authenticator app shows now, or a backup code." />
        <ErrorBox error={action.error} />
        <div className="actions">
          <button className="danger" type="submit" disabled={action.busy}>
            Turn off two-step sign-in
          </button>
        </div>
      </form>
    );
  }

  const setup = (event: FormEvent) => {
    event.preventDefault();
    void action.run(async () => {
      setEnrolment(await twoFactorSetup(password));
      setPassword("");
      return "";
    });
  };
  if (!asking) {
    return (
      <div className="form">
        <p data-testid="twofactor-status">
          <strong>Off.</strong> With two-step sign-in, signing in also needs a code from an app on your phone.
        </p>
        <Notice>{action.done}</Notice>
        <div className="actions">
          <button type="button" onClick={() => setAsking(true)}>
            Set up two-step sign-in
          </button>
        </div>
      </div>
    );
  }
  return (
    <form onSubmit={setup} className="form">
      <p data-testid="twofactor-status">
        <strong>Off.</strong> With two-step sign-in, signing in also needs a code from an app on your phone.
      </p>
      <Field label="Your password" name="password" type="password" autoComplete="current-password" error={action.error} value={password} onChange={(e) => setPassword(e.target.value)} required autoFocus help="Setting up two-step sign-in needs your password." />
      <ErrorBox error={action.error} />
      <div className="actions">
        <button type="submit" disabled={action.busy}>
          Continue
        </button>
        <button type="button" onClick={() => setAsking(false)}>
          Cancel
        </button>
      </div>
    </form>
  );
}

function when(iso: string): string {
  const date = new Date(iso);
  return isNaN(date.getTime()) ? "" : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

// Devices listed before "Show all": the list stays short on a phone.
const SESSIONS_SHOWN = 3;

function SessionsSection({ refreshKey }: { refreshKey: number }) {
  const [showAll, setShowAll] = useState(false);
  const { data: sessions, setData, error: loadError, reload } = useLoad<DeviceSession[]>(listSessions);
  const action = useFormAction(OFFLINE);
  useEffect(() => {
    if (refreshKey) reload();
  }, [refreshKey, reload]);

  if (loadError && !sessions) return <LoadFailed error={loadError} onRetry={reload} />;
  if (!sessions) return <p className="note">Loading…</p>;
  const others = sessions.filter((s) => !s.current);
  const sorted = [...sessions].sort((a, b) => Number(b.current) - Number(a.current));
  const shown = showAll ? sorted : sorted.slice(0, SESSIONS_SHOWN);
  return (
    <div className="form">
      <ul className="sessions">
        {shown.map((s) => {
          const name = deviceName(s.user_agent);
          return (
            <li key={s.id} data-testid="session" data-current={s.current ? "true" : "false"}>
              <div className="session-head">
                <span className="session-name" title={s.user_agent}>
                  {name}
                </span>
                {s.current && <span className="badge">This device</span>}
              </div>
              <div className="numbers">
                {s.ip_address ? `${s.ip_address} · ` : ""}last active {when(s.last_seen_at)} · signed in {when(s.created_at)}
              </div>
              {!s.current && (
                <div className="actions">
                  <button
                    type="button"
                    aria-label={`Sign out this device (${name}, last active ${when(s.last_seen_at)})`}
                    disabled={action.busy}
                    onClick={() =>
                      void action.run(async () => {
                        await revokeSession(s.id);
                        setData(sessions.filter((x) => x.id !== s.id));
                        return `${name} is signed out.`;
                      })
                    }
                  >
                    Sign out this device
                  </button>
                </div>
              )}
            </li>
          );
        })}
      </ul>
      <ErrorBox error={action.error} />
      <Notice>{action.done}</Notice>
      <div className="actions">
        {others.length > 0 && (
          <button
            type="button"
            className="quiet-danger"
            disabled={action.busy}
            onClick={() =>
              void action.run(async () => {
                const revoked = await revokeOtherSessions();
                setData(sessions.filter((x) => x.current));
                return revoked === 1 ? "1 other device is signed out." : `${revoked} other devices are signed out.`;
              })
            }
          >
            Sign out everywhere else
          </button>
        )}
        {!showAll && sessions.length > SESSIONS_SHOWN && (
          <button type="button" onClick={() => setShowAll(true)}>
            Show all {sessions.length}
          </button>
        )}
        <button type="button" onClick={reload}>
          Refresh the list
        </button>
      </div>
    </div>
  );
}

function PreferencesSection() {
  const { data: saved, setData, error: loadError, reload } = useLoad<Preferences>(getPreferences);
  const [form, setForm] = useState<Preferences | null>(null);
  const action = useFormAction(OFFLINE);
  useEffect(() => {
    if (saved) setForm(saved);
  }, [saved]);

  if (loadError && !saved) return <LoadFailed error={loadError} onRetry={reload} />;
  if (!saved || !form) return <p className="note">Loading…</p>;
  const sizes = form.default_chunk_size === null || CHUNK_SIZES.includes(form.default_chunk_size) ? CHUNK_SIZES : [...CHUNK_SIZES, form.default_chunk_size].sort((a, b) => a - b);

  function submit(event: FormEvent) {
    event.preventDefault();
    void action.run(async () => {
      setData(await updatePreferences(form!));
      return "Preferences saved.";
    });
  }
  return (
    <form onSubmit={submit} className="form">
      <fieldset className="levels">
        <legend>Default service level</legend>
        {SERVICE_LEVELS.map((l) => (
          <label key={l.value} className={form.default_service_level === l.value ? "level selected" : "level"}>
            <input type="radio" name="default_service_level" value={l.value} checked={form.default_service_level === l.value} onChange={() => setForm({ ...form, default_service_level: l.value })} />
            {l.label}
          </label>
        ))}
      </fieldset>
      <label className="check">
        <input type="checkbox" name="duplicate_detection" checked={form.duplicate_detection} onChange={(e) => setForm({ ...form, duplicate_detection: e.target.checked })} />
        Warn before sending a study the server already has
      </label>
      <details className="advanced" open={form.default_chunk_size !== null}>
        <summary>Advanced</summary>
        <div className="field">
          <label htmlFor="default-chunk-size">Piece size</label>
          <select
            id="default-chunk-size"
            name="default_chunk_size"
            value={form.default_chunk_size ?? ""}
            onChange={(e) => setForm({ ...form, default_chunk_size: e.target.value ? Number(e.target.value) : null })}
            aria-describedby="chunk-size-help"
          >
            <option value="">{pieceSizeWords(null)}</option>
            {sizes.map((size) => (
              <option key={size} value={size}>
                {pieceSizeWords(size)}
              </option>
            ))}
          </select>
          <span className="help" id="chunk-size-help">
            Studies are sent in pieces, and a piece cut off by a bad connection is sent again. The app picks the size for each connection; choose smaller pieces only for very weak networks.
          </span>
        </div>
      </details>
      <ErrorBox error={action.error} />
      <Notice>{action.done}</Notice>
      <div className="actions">
        <button className="primary" type="submit" disabled={action.busy}>
          Save preferences
        </button>
      </div>
    </form>
  );
}

function DataSection() {
  const action = useFormAction(OFFLINE);
  return (
    <div className="form">
      <p className="note">Your profile, preferences, devices and what your account did, as a JSON file.</p>
      <ErrorBox error={action.error} />
      <Notice>{action.done}</Notice>
      <div className="actions">
        <button
          type="button"
          disabled={action.busy}
          onClick={() =>
            void action.run(async () => {
              saveFile("relaypacs-my-data.json", JSON.stringify(await exportMyData(), null, 2), "application/json");
              return "Your data is downloaded.";
            })
          }
        >
          Download my data
        </button>
      </div>
    </div>
  );
}

function PushSection() {
  const { data: state, setData, error: loadError, reload } = useLoad<PushState>(pushStatus);
  const action = useFormAction(PUSH_WORDS.offline);
  if (loadError && !state) return <LoadFailed error={loadError} onRetry={reload} />;
  if (!state) return <p className="note">Loading…</p>;
  const sentence = { on: PUSH_WORDS.on, off: PUSH_WORDS.off, denied: PUSH_WORDS.denied, unavailable: PUSH_WORDS.unavailable, unsupported: PUSH_WORDS.unsupported }[state];
  return (
    <div className="form">
      <p data-testid="push-state" data-state={state}>
        {sentence}
      </p>
      <ErrorBox error={action.error} />
      <Notice>{action.done}</Notice>
      {(state === "on" || state === "off") && (
        <div className="actions">
          <button
            type="button"
            className={state === "off" ? "primary" : undefined}
            disabled={action.busy}
            onClick={() =>
              void action.run(async () => {
                const after = state === "off" ? await pushEnable() : await pushDisable();
                setData(after);
                return after === "off" && state === "on" ? PUSH_WORDS.turnedOff : "";
              })
            }
          >
            {state === "off" ? PUSH_WORDS.enable : PUSH_WORDS.disable}
          </button>
        </div>
      )}
    </div>
  );
}

function StorageSection({ owner }: { owner: string }) {
  const [storage, setStorage] = useState("");
  // The first confirmation, then the refusal while something is unsent (and its own confirmation).
  const [asking, setAsking] = useState<"no" | "clear" | "unsent">("no");
  const [left, setLeft] = useState<DeviceLeft | null>(null);
  const action = useFormAction();
  useEffect(() => {
    void navigator.storage?.estimate?.().then((e) => {
      if (e.quota) setStorage(`${formatBytes(e.usage ?? 0)} used of ${formatBytes(e.quota)}.`);
    });
  }, []);
  const clear = (discard: boolean) =>
    void action.run(async () => {
      try {
        await localDataClear(owner, { discard });
      } catch (error) {
        // Nothing was cleared: back to the "Clear local data" button the error points to.
        setAsking("no");
        throw error;
      }
      return "";
    });
  return (
    <div className="form">
      <p className="note">
        <span data-testid="storage-used">{storage}</span> Unsent studies stay here until the PACS has them.
      </p>
      <ErrorBox error={action.error} />
      {asking === "no" && (
        <div className="actions">
          <button type="button" className="quiet-danger" onClick={() => setAsking("clear")}>
            Clear local data
          </button>
        </div>
      )}
      {asking === "clear" && (
        <div className="dialog" role="alertdialog" aria-label="Clear local data">
          <p>Clearing deletes everything this app keeps on this device, for every account, and signs you out. Your account and what the server has are kept.</p>
          <div className="actions">
            <button
              type="button"
              className="danger"
              disabled={action.busy}
              onClick={() =>
                // Every account's unsent studies, answers and cancels: clearing deletes them all.
                void deviceLeft(owner).then(
                  (found) => {
                    if (!somethingOnDevice(found)) return clear(false);
                    setLeft(found);
                    setAsking("unsent");
                  },
                  (error: unknown) => action.setError(formError(error)),
                )
              }
            >
              {action.busy ? "Clearing…" : "Clear and sign out"}
            </button>
            <button type="button" onClick={() => setAsking("no")}>
              Cancel
            </button>
          </div>
        </div>
      )}
      {asking === "unsent" && left && (
        <div className="dialog" role="alertdialog" aria-label="Not sent yet">
          {clearWords(left).map((line) => (
            <p key={line}>{line}</p>
          ))}
          <div className="actions">
            <button type="button" className="primary" onClick={() => setAsking("no")}>
              {clearChoices(left).keep}
            </button>
            <button type="button" className="danger" disabled={action.busy} onClick={() => clear(true)}>
              {action.busy ? "Clearing…" : clearChoices(left).discard}
            </button>
          </div>
        </div>
      )}
    </div>
  );
}

function AboutSection() {
  const secure = window.isSecureContext;
  return (
    // One line under the storage (a phone's settings stay one short scroll).
    <p className="note" data-testid="this-device">
      <span data-testid="offline-ability">{secure ? "Works offline and with the app closed." : INSECURE_NOTICE}</span>{" "}
      <span data-testid="app-version">App version {APP_VERSION}.</span>
    </p>
  );
}

export function Settings({ username, online }: { username: string; online: boolean }) {
  const heading = useHeadingFocus<HTMLHeadingElement>();
  const [sessionsKey, setSessionsKey] = useState(0);
  const { data: profile } = useLoad(getProfile);
  // Radiologists and auditors send no studies: no upload preferences for them.
  const sends = profile ? homeFor(profile).sends : false;
  return (
    <main className="screen">
      <div className="toolbar">
        <h1 ref={heading} tabIndex={-1}>
          Settings
        </h1>
        <button type="button" onClick={() => navigate({ screen: "home" })}>
          Back to studies
        </button>
      </div>
      {!online && <p className="warning">Settings need the network. Your queued studies are kept and sent when it is back.</p>}
      <Group id="profile" title="Profile">
        <Section id="profile" title="Name and email">
          <ProfileSection />
        </Section>
        <Section id="data" title="Your data">
          <DataSection />
        </Section>
      </Group>
      <Group id="security" title="Security">
        <Section id="password" title="Password">
          <PasswordSection onOthersSignedOut={() => setSessionsKey((k) => k + 1)} />
        </Section>
        <Section id="twofactor" title="Two-step sign-in">
          <TwoFactorSection username={username} />
        </Section>
      </Group>
      <Group id="devices" title="Devices">
        <Section id="sessions" title="Signed-in devices">
          <SessionsSection refreshKey={sessionsKey} />
        </Section>
      </Group>
      {sends && (
        <Group id="upload" title="Upload">
          <Section id="preferences" title="Upload preferences">
            <PreferencesSection />
          </Section>
        </Group>
      )}
      <Group id="device" title="This device">
        <Section id="push" title="Notifications">
          <PushSection />
        </Section>
        <Section id="storage" title="Storage and version">
          <StorageSection owner={username} />
          <AboutSection />
        </Section>
      </Group>
    </main>
  );
}

/** The screens before sign-in: create an account, confirm the email address, and reset a
 * forgotten password. Every one needs the network; the server's words are shown as sent. */
import { useEffect, useRef, useState, type FormEvent } from "react";
import { confirmPasswordReset, forgetAwaitingConfirmation, register, rememberAwaitingConfirmation, requestPasswordReset, resendVerification, verifyEmail } from "./account";
import { formError, type FormError } from "./formErrors";
import { navigate } from "./router";
import { ErrorBox, Field, Notice, useFormAction, useHeadingFocus } from "./ui";

export const PASSWORD_HELP = "At least 12 characters with three of: small letters, capitals, digits, other signs; not like your name or email.";

function BackToSignIn({ primary = false, label = "Back to sign in" }: { primary?: boolean; label?: string }) {
  return (
    <button type="button" className={primary ? "primary" : undefined} onClick={() => navigate({ screen: "home" })}>
      {label}
    </button>
  );
}

function ShowPassword({ shown, onChange }: { shown: boolean; onChange: (shown: boolean) => void }) {
  return (
    <label className="check">
      <input type="checkbox" checked={shown} onChange={(e) => onChange(e.target.checked)} />
      Show password
    </label>
  );
}

export function Register() {
  const heading = useHeadingFocus<HTMLHeadingElement>();
  const [form, setForm] = useState({ username: "", email: "", fullName: "", password: "" });
  const [showPassword, setShowPassword] = useState(false);
  const { busy, error, run } = useFormAction("Creating an account needs the network, and the server cannot be reached.");
  const [sentTo, setSentTo] = useState<string | null>(null);

  function submit(event: FormEvent) {
    event.preventDefault();
    void run(async () => {
      await register({ username: form.username.trim(), email: form.email.trim(), fullName: form.fullName.trim(), password: form.password });
      rememberAwaitingConfirmation(form.username);
      setSentTo(form.email.trim());
      return "";
    });
  }

  if (sentTo) return <CheckEmail address={sentTo} />;
  const set = (key: keyof typeof form) => (e: React.ChangeEvent<HTMLInputElement>) => setForm({ ...form, [key]: e.target.value });
  return (
    <main className="screen narrow">
      <h1 ref={heading} tabIndex={-1}>
        Create an account
      </h1>
      <form onSubmit={submit} className="form">
        <Field label="Username" name="username" error={error} value={form.username} onChange={set("username")} autoComplete="username" autoCapitalize="none" required help="Letters, digits and @ . + - _ only." />
        <Field label="Email" name="email" type="email" error={error} value={form.email} onChange={set("email")} autoComplete="email" required />
        <Field label="Full name" name="full_name" error={error} value={form.fullName} onChange={set("fullName")} autoComplete="name" required />
        <Field
          label="Password"
          name="password"
          type={showPassword ? "text" : "password"}
          error={error}
          value={form.password}
          onChange={set("password")}
          autoComplete="new-password"
          required
          help={PASSWORD_HELP}
        />
        <ShowPassword shown={showPassword} onChange={setShowPassword} />
        <ErrorBox error={error} />
        <button className="primary" type="submit" disabled={busy}>
          {busy ? "Creating the account…" : "Create account"}
        </button>
        <BackToSignIn />
      </form>
    </main>
  );
}

function CheckEmail({ address }: { address: string }) {
  const heading = useHeadingFocus<HTMLHeadingElement>();
  return (
    <main className="screen narrow" data-testid="check-email">
      <h1 ref={heading} tabIndex={-1}>
        Check your email
      </h1>
      {/* The server answers the same whether or not the name or address was free, so
          nothing more can be promised here. */}
      <p>
        If an account can be created with these details, an email with a link to confirm your address is on its way to <strong>{address}</strong>. Open the link to finish,
        then sign in.
      </p>
      <p className="note">No email after a few minutes? Check the spam folder, or ask your administrator.</p>
      <BackToSignIn primary />
    </main>
  );
}

export function VerifyEmail({ token }: { token: string }) {
  const heading = useHeadingFocus<HTMLHeadingElement>();
  const [state, setState] = useState<"checking" | "done" | "failed">("checking");
  const [error, setError] = useState<FormError | null>(null);
  const [attempt, setAttempt] = useState(0);
  const sent = useRef(-1);

  useEffect(() => {
    // Once per attempt, also under React's development double-run of effects.
    if (sent.current === attempt) return;
    sent.current = attempt;
    if (!token) {
      setError({ code: "invalid_verification_link", message: "This confirmation link is incomplete.", hint: "Open the link from the email again, or copy all of it into the browser.", problems: [], fields: {} });
      setState("failed");
      return;
    }
    verifyEmail(token).then(
      (answer) => {
        forgetAwaitingConfirmation(answer.username);
        setState("done");
      },
      (e: unknown) => {
        setError(formError(e, "Confirming your email address needs the network, and the server cannot be reached."));
        setState("failed");
      },
    );
  }, [token, attempt]);

  return (
    <main className="screen narrow">
      <h1 ref={heading} tabIndex={-1}>
        Confirm your email
      </h1>
      {state === "checking" && <Notice>Confirming your email address…</Notice>}
      {state === "done" && (
        <>
          <Notice>Your email address is confirmed. You can sign in now.</Notice>
          <BackToSignIn primary label="Sign in" />
        </>
      )}
      {state === "failed" && (
        <>
          <ErrorBox error={error} />
          <div className="actions">
            {error?.code === "network_unavailable" && (
              <button
                type="button"
                className="primary"
                onClick={() => {
                  setState("checking");
                  setAttempt(attempt + 1);
                }}
              >
                Try again
              </button>
            )}
            <BackToSignIn />
          </div>
          {error?.code === "invalid_verification_link" && <ResendVerification />}
        </>
      )}
    </main>
  );
}

/** Ask for the confirmation email again (the answer does not tell whether the address has
 * an account); `intro` says when it is needed. */
export function ResendVerification({ intro }: { intro?: string } = {}) {
  const [email, setEmail] = useState("");
  const { busy, error, done, run } = useFormAction();
  function submit(event: FormEvent) {
    event.preventDefault();
    void run(async () => (await resendVerification(email.trim())).detail);
  }
  return (
    <form onSubmit={submit} className="form section" aria-labelledby="resend-heading">
      <h2 id="resend-heading">Send the confirmation email again</h2>
      {intro && <p className="note">{intro}</p>}
      <Field label="Email" name="email" type="email" autoComplete="email" error={error} value={email} onChange={(e) => setEmail(e.target.value)} required />
      <ErrorBox error={error} />
      <Notice>{done}</Notice>
      <button type="submit" disabled={busy}>
        Send again
      </button>
    </form>
  );
}

export function ForgotPassword() {
  const heading = useHeadingFocus<HTMLHeadingElement>();
  const [email, setEmail] = useState("");
  const { busy, error, done, run } = useFormAction("Resetting a password needs the network, and the server cannot be reached.");
  function submit(event: FormEvent) {
    event.preventDefault();
    void run(async () => (await requestPasswordReset(email.trim())).detail);
  }
  return (
    <main className="screen narrow">
      <h1 ref={heading} tabIndex={-1}>
        Forgot your password?
      </h1>
      {done ? (
        <>
          <Notice>{done}</Notice>
          <p className="note">Open the link in the email on this device to choose a new password. No email after a few minutes? Check the spam folder.</p>
          <BackToSignIn primary />
        </>
      ) : (
        <form onSubmit={submit} className="form">
          <p className="note">Type the email address of your account; we send a link to choose a new password.</p>
          <Field label="Email" name="email" type="email" autoComplete="email" error={error} value={email} onChange={(e) => setEmail(e.target.value)} required />
          <ErrorBox error={error} />
          <button className="primary" type="submit" disabled={busy}>
            {busy ? "Sending…" : "Email me a reset link"}
          </button>
          <BackToSignIn />
        </form>
      )}
    </main>
  );
}

export function ResetPassword({ uid, token }: { uid: string; token: string }) {
  const heading = useHeadingFocus<HTMLHeadingElement>();
  const [password, setPassword] = useState("");
  const [repeat, setRepeat] = useState("");
  const [showPassword, setShowPassword] = useState(false);
  const { busy, error, run, setError } = useFormAction("Choosing a new password needs the network, and the server cannot be reached.");
  const [done, setDone] = useState(false);

  function submit(event: FormEvent) {
    event.preventDefault();
    if (password !== repeat) {
      setError({ code: "passwords_differ", message: "The two passwords are not the same.", hint: "Type the new password twice, exactly alike.", problems: [], fields: {} });
      return;
    }
    void run(async () => {
      await confirmPasswordReset({ uid, token, newPassword: password });
      setDone(true);
      return "";
    });
  }

  return (
    <main className="screen narrow">
      <h1 ref={heading} tabIndex={-1}>
        Choose a new password
      </h1>
      {done ? (
        <>
          <Notice>Your password is changed. Every device signed in to your account was signed out; sign in with the new password.</Notice>
          <BackToSignIn primary label="Sign in" />
        </>
      ) : !uid || !token ? (
        <>
          <ErrorBox error={{ code: "invalid_reset_link", message: "This password reset link is incomplete.", hint: "Open the link from the email again, or ask for a new one." }} />
          <div className="actions">
            <button type="button" className="primary" onClick={() => navigate({ screen: "forgot" })}>
              Ask for a new link
            </button>
            <BackToSignIn />
          </div>
        </>
      ) : (
        <form onSubmit={submit} className="form">
          <Field
            label="New password"
            name="new_password"
            type={showPassword ? "text" : "password"}
            autoComplete="new-password"
            error={error}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            required
            help={PASSWORD_HELP}
          />
          <Field label="New password again" name="repeat" type={showPassword ? "text" : "password"} autoComplete="new-password" value={repeat} onChange={(e) => setRepeat(e.target.value)} required />
          <ShowPassword shown={showPassword} onChange={setShowPassword} />
          <ErrorBox error={error} />
          <button className="primary" type="submit" disabled={busy}>
            {busy ? "Saving…" : "Save the new password"}
          </button>
          {error?.code === "invalid_reset_link" && (
            <button type="button" onClick={() => navigate({ screen: "forgot" })}>
              Ask for a new link
            </button>
          )}
          <BackToSignIn />
        </form>
      )}
    </main>
  );
}

/** Small pieces the screens share. */
import { useEffect, useId, useRef, useState, type InputHTMLAttributes, type ReactNode } from "react";
import type { UserError } from "./db";
import { fieldProblem, formError, messageBeforeProblems, type FormError } from "./formErrors";

export function ErrorBox({ error }: { error: UserError | FormError | null }) {
  if (!error) return null;
  const problems = "problems" in error ? error.problems : [];
  return (
    <div className="error" role="alert">
      <strong>{"problems" in error ? messageBeforeProblems(error) : error.message}</strong>
      {problems.length > 0 && (
        <ul className="problems">
          {problems.map((p) => (
            <li key={p}>{p}</li>
          ))}
        </ul>
      )}
      {error.hint && <span> {error.hint}</span>}
    </div>
  );
}

/** A success or progress line, read out by screen readers when it changes. */
export function Notice({ children }: { children: ReactNode }) {
  if (!children) return null;
  return (
    <p className="notice" role="status">
      {children}
    </p>
  );
}

/** Puts the keyboard focus on a new screen's heading, so keyboard and screen-reader users
 * start at its top rather than on a button of the screen before. */
export function useHeadingFocus<T extends HTMLElement>() {
  const ref = useRef<T>(null);
  useEffect(() => {
    ref.current?.focus();
  }, []);
  return ref;
}

/** The text under a field that says what is wrong with it; `id` is what the field's
 * aria-describedby points at. */
export function FieldProblem({ id, text }: { id: string; text: string }) {
  if (!text) return null;
  return (
    <span className="field-problem" id={id}>
      {text}
    </span>
  );
}

type FieldProps = InputHTMLAttributes<HTMLInputElement> & {
  label: string;
  /** The field's name in the API, whose problems the server lists under `fields`. */
  name: string;
  error?: FormError | null;
  help?: string;
};

/** A labelled input that shows the server's problems with it and is marked invalid then. */
export function Field({ label, name, error = null, help, ...input }: FieldProps) {
  const id = useId();
  const problem = fieldProblem(error, name);
  const described = [help ? `${id}-help` : "", problem ? `${id}-problem` : ""].filter(Boolean).join(" ");
  // Help and problems sit outside the label, so the field's name stays its label alone and
  // screen readers read them once, as its description.
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      <input id={id} name={name} aria-invalid={problem ? true : undefined} aria-describedby={described || undefined} {...input} />
      {help && (
        <span className="help" id={`${id}-help`}>
          {help}
        </span>
      )}
      <FieldProblem id={`${id}-problem`} text={problem} />
    </div>
  );
}

/** A form's request: `run` shows it busy, then the notice its action returns or the
 * server's error (`offline` is the message when the server cannot be reached). */
export function useFormAction(offline?: string) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<FormError | null>(null);
  const [done, setDone] = useState("");
  const run = async (action: () => Promise<string>) => {
    setBusy(true);
    setError(null);
    setDone("");
    try {
      setDone(await action());
    } catch (e) {
      setError(formError(e, offline));
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, done, run, setError };
}

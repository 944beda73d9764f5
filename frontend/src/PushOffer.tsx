/** The card that offers notifications on this device, on the start screen, at the moment it
 * makes sense (push.ts `offerDue`): once the user's first study reached the server. It says
 * why before the browser asks; "Not now" hides it for good on this device (Settings can
 * still turn notifications on). */
import { useLiveQuery } from "dexie-react-hooks";
import { useEffect, useState } from "react";
import { db } from "./db";
import { formError, type FormError } from "./formErrors";
import { browserEnv, offerDue, pushDecline, pushDeclined, pushEnable, pushStatus, PUSH_WORDS, SENT_STATES, type PushState } from "./push";
import { ErrorBox } from "./ui";

function useStudySent(owner: string): boolean {
  const sent = useLiveQuery(
    () =>
      db.studies
        .where("state")
        .anyOf([...SENT_STATES])
        .filter((s) => s.owner === owner)
        .count(),
    [owner],
  );
  return (sent ?? 0) > 0;
}

export function PushOffer({ owner, online }: { owner: string; online: boolean }) {
  const studySent = useStudySent(owner);
  const [declined, setDeclined] = useState(() => pushDeclined(owner));
  const [state, setState] = useState<PushState | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<FormError | null>(null);
  const [outcome, setOutcome] = useState("");
  const permission = browserEnv().permission();
  // Only then is the server asked whether push is on, and the card considered.
  const worthAsking = studySent && !declined && permission === "default" && online;
  useEffect(() => {
    if (!worthAsking) return;
    let live = true;
    pushStatus().then(
      (value) => live && setState(value),
      () => undefined,
    );
    return () => {
      live = false;
    };
  }, [worthAsking]);

  const due = offerDue({ studySent, declined, permission, state });
  const [shown, setShown] = useState(false);
  useEffect(() => {
    if (due) setShown(true);
  }, [due]);

  async function turnOn() {
    setBusy(true);
    setError(null);
    try {
      const after = await pushEnable();
      setState(after);
      if (after === "on") setOutcome(PUSH_WORDS.nowOn);
      else if (after === "denied") setOutcome(PUSH_WORDS.nowDenied);
      else {
        // The browser's question was closed unanswered: as good as "Not now".
        pushDecline(owner);
        setDeclined(true);
      }
    } catch (e) {
      setError(formError(e, PUSH_WORDS.offline));
    } finally {
      setBusy(false);
    }
  }

  if (outcome) {
    return (
      <section className="home" data-testid="push-offer-outcome" role="status">
        <p>{outcome}</p>
        <div className="actions">
          <button className="link" onClick={() => setOutcome("")}>
            Close
          </button>
        </div>
      </section>
    );
  }
  // Once shown, the card stays until the user answers it (it does not vanish under a finger
  // when, say, the permission changes meanwhile).
  if (!shown && !due) return null;
  if (declined || state === "on") return null;
  return (
    <section className="home" data-testid="push-offer" role="region" aria-labelledby="push-offer-title">
      <p>
        <strong id="push-offer-title">{PUSH_WORDS.offerTitle}</strong>
      </p>
      <p>{PUSH_WORDS.offer}</p>
      <ErrorBox error={error} />
      <div className="actions">
        <button onClick={() => void turnOn()} disabled={busy}>
          {PUSH_WORDS.turnOn}
        </button>
        <button
          className="link"
          onClick={() => {
            pushDecline(owner);
            setDeclined(true);
          }}
        >
          {PUSH_WORDS.notNow}
        </button>
      </div>
    </section>
  );
}

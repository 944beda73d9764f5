/** What signing out would leave behind on this device, and the words of the warning: the
 * studies the PACS has not received yet and the answers to the radiologist not yet sent
 * (queued or refused; they may describe the patient, so they never outlive the sign-out). */
import { unsentReplies } from "./reports";
import { unfinishedStudies } from "./studies";

export interface LeftOnDevice {
  studies: number;
  replies: number;
}

export async function leftOnDevice(owner: string): Promise<LeftOnDevice> {
  const [studies, replies] = await Promise.all([unfinishedStudies(owner), unsentReplies(owner)]);
  return { studies: studies.length, replies };
}

export function somethingLeft(left: LeftOnDevice): boolean {
  return left.studies > 0 || left.replies > 0;
}

/** The warning's sentences, one per kind of thing left. */
export function leftWords(left: LeftOnDevice): string[] {
  const out: string[] = [];
  if (left.studies) out.push(`${left.studies === 1 ? "1 study is" : `${left.studies} studies are`} not yet received by the PACS.`);
  if (left.replies) {
    out.push(
      `${left.replies === 1 ? "1 answer" : `${left.replies} answers`} to the radiologist ${left.replies === 1 ? "is" : "are"} not yet sent; signing out deletes ${left.replies === 1 ? "it" : "them"} from this device.`,
    );
  }
  return out;
}

/** The two choices of the warning: stay and finish, or lose what is left and sign out. */
export function leftChoices(left: LeftOnDevice): { stay: string; discard: string } {
  if (left.studies) return { stay: "Stay signed in and finish them", discard: "Discard them and sign out" };
  return { stay: "Stay signed in and send them", discard: "Delete them and sign out" };
}

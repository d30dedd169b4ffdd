import type { Ledger } from './ledger';
import { isObj } from './http';
import { clientPromptId } from './promptIds';

/** extra_data keys that carry credentials (Comfy.org API nodes, and anything named like one). */
const SECRET_KEY = /^(auth_token_comfy_org|api_key_comfy_org)$|(^|_)(auth_token|api_key|apikey|access_token|token|secret|password)(_|$)/i;

/** A copy of extra_data fit for `viewer`: secrets only for their owner, the upstream client id mapped back. */
export function viewExtraData(extra: unknown, promptId: string, viewer: string, ledger: Ledger): unknown {
  if (!isObj(extra)) return extra;
  const rec = ledger.get(promptId);
  const out: Record<string, unknown> = { ...extra };
  if (rec?.owner !== viewer) for (const k of Object.keys(out)) if (SECRET_KEY.test(k)) delete out[k];
  if (rec && out.client_id === rec.upstreamClientId) {
    if (rec.clientId) out.client_id = rec.clientId;
    else delete out.client_id;
  }
  return out;
}

/** A queue/history prompt tuple `[number, prompt_id, prompt, extra_data, outputs(, sensitive)]` fit for `viewer`. */
export function viewPromptTuple(entry: unknown, viewer: string, ledger: Ledger): unknown {
  if (!Array.isArray(entry) || typeof entry[1] !== 'string') return entry;
  const pid = clientPromptId(ledger, entry[1]);
  const out = entry.slice();
  out[1] = pid;
  out[3] = viewExtraData(entry[3], pid, viewer, ledger);
  // Older ComfyUI versions keep the secrets in a sixth element.
  if (out.length > 5 && ledger.owner(pid) !== viewer) out.length = 5;
  return out;
}

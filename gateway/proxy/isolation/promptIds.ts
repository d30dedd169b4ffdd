import type { Logger } from '../../log';
import type { Ledger } from './ledger';

/**
 * The one translation between the prompt ids clients see (always the gateway's) and the ids ComfyUI uses. Servers
 * from mid-2024 (e.g. 7914c47) ignore the prompt_id the gateway sends and make their own; the ledger keeps the
 * pair, and every place that reads or names a prompt id upstream goes through here.
 */
export interface PromptIds {
  /** the id a client knows for a prompt ComfyUI calls `upstreamId` */
  toClient(upstreamId: string): string;
  /** the id ComfyUI knows for the client's (gateway) prompt id */
  toUpstream(clientId: string): string;
  /** records ComfyUI's answer to POST /prompt for the gateway's id (warns once when the server ignores ours) */
  answered(gatewayId: string, upstreamId: string): void;
  /** whether ComfyUI honours the prompt_id the gateway sends (null until the first answer) */
  readonly honoured: boolean | null;
  /** a POST /prompt for this upstream client id is on its way: returns the function that ends it */
  begin(upstreamClientId: string): () => void;
  /** POSTs for this upstream client id still waiting for ComfyUI's answer */
  inFlight(upstreamClientId: string): boolean;
  /** called whenever a POST ends (answered or failed), with its upstream client id */
  onSettled(listener: (upstreamClientId: string) => void): void;
}

/** THE translation of an id ComfyUI uses into the one the client knows (the gateway's when the two differ). */
export function clientPromptId(ledger: Pick<Ledger, 'byUpstreamId'>, upstreamId: string): string {
  return ledger.byUpstreamId?.(upstreamId) ?? upstreamId;
}

/** THE translation of a client's (gateway) prompt id into the one ComfyUI knows. */
export function upstreamPromptId(ledger: Pick<Ledger, 'get'>, clientId: string): string {
  return ledger.get(clientId)?.upstreamId ?? clientId;
}

/** Builds the translator over the ledger. */
export function createPromptIds(deps: { ledger: Ledger; logger: Logger; onLearned?: (honoured: boolean) => void }): PromptIds {
  const { ledger, logger } = deps;
  const flying = new Map<string, number>();
  const listeners: ((cid: string) => void)[] = [];
  let honoured: boolean | null = null;
  let warned = false;

  return {
    toClient: (upstreamId) => clientPromptId(ledger, upstreamId),
    toUpstream: (clientId) => upstreamPromptId(ledger, clientId),
    answered(gatewayId, upstreamId) {
      const now = upstreamId === gatewayId;
      if (honoured !== now) deps.onLearned?.(now);
      honoured = now;
      if (now) return;
      ledger.setUpstreamId(gatewayId, upstreamId);
      if (!warned) {
        warned = true;
        logger.warn(
          { sent: gatewayId, answered: upstreamId },
          "ComfyUI ignores the prompt_id the gateway sends (older server): its ids are mapped to the gateway's, so clients see the gateway's ids",
        );
      }
    },
    get honoured() {
      return honoured;
    },
    begin(cid) {
      flying.set(cid, (flying.get(cid) ?? 0) + 1);
      let ended = false;
      return () => {
        if (ended) return;
        ended = true;
        const n = (flying.get(cid) ?? 1) - 1;
        if (n > 0) flying.set(cid, n);
        else flying.delete(cid);
        for (const l of listeners) l(cid);
      };
    },
    inFlight: (cid) => (flying.get(cid) ?? 0) > 0,
    onSettled(listener) {
      listeners.push(listener);
    },
  };
}

/**
 * A POST body that names prompts (`delete: [ids]`, `prompt_id`) as ComfyUI must read it: the client's ids
 * translated. Anything that is not such a JSON object goes as it came.
 */
export function upstreamIdsInBody(raw: Buffer, ids: Pick<PromptIds, 'toUpstream'>): Buffer {
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch {
    return raw;
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return raw;
  const b = body as Record<string, unknown>;
  let changed = false;
  const map = (v: unknown) => {
    if (typeof v !== 'string') return v;
    const up = ids.toUpstream(v);
    if (up !== v) changed = true;
    return up;
  };
  if (Array.isArray(b.delete)) b.delete = b.delete.map(map);
  if ('prompt_id' in b) b.prompt_id = map(b.prompt_id);
  return changed ? Buffer.from(JSON.stringify(b)) : raw;
}

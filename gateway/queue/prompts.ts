/* The queue's prompt records: held prompts built from submissions, refusals kept for /history, release waiters. */
import type { UpstreamResponse } from '../proxy/upstream';
import type { FailedPrompt, HeldPrompt } from './store';

/** ComfyUI's refusal of a released prompt (its 400 body), or a reason in ComfyUI's shape. */
export function refusalOf(up: UpstreamResponse | null, reason?: string, type = 'invalid_prompt'): Record<string, unknown> {
  if (up) {
    try {
      return JSON.parse(up.body.toString('utf8')) as Record<string, unknown>;
    } catch {
      reason ??= `ComfyUI answered ${up.status}`;
    }
  }
  return { error: { type, message: reason ?? 'refused', details: '', extra_info: {} }, node_errors: {} };
}

/** A prompt that will not run, as the gateway keeps it for /history. */
export function failedPrompt(p: HeldPrompt, error: Record<string, unknown>): FailedPrompt {
  const body = JSON.parse(p.body) as Record<string, unknown>;
  return {
    id: p.id,
    owner: p.owner,
    at: Date.now(),
    error,
    prompt: [p.number, p.id, body.prompt ?? {}, body.extra_data ?? { client_id: p.upstreamClientId }, []],
  };
}

/** A submission as the queue keeps it. */
export function heldOf(s: Submission, owner: string, at: number, n: number): HeldPrompt {
  return {
    id: s.id,
    owner,
    role: s.role,
    seq: n,
    number: n,
    at,
    front: s.front,
    body: s.body,
    comfyUser: s.comfyUser,
    clientId: s.clientId,
    upstreamClientId: s.upstreamClientId,
  };
}

/** Submissions waiting for the answer to their own release, each with a deadline. */
export function createWaiters() {
  const waiters = new Map<string, (up: UpstreamResponse) => void>();
  function waitRelease(id: string, ms: number): Promise<UpstreamResponse | null> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        waiters.delete(id);
        resolve(null);
      }, ms);
      waiters.set(id, (up) => {
        clearTimeout(t);
        waiters.delete(id);
        resolve(up);
      });
    });
  }
  return { waiters, waitRelease };
}

/** Listeners the queue calls (WebSocket notices, usage). */
export interface QueueNotices {
  /** a user's count changed without ComfyUI knowing (held, deleted) */
  counts(): void;
  /** a held prompt was refused when released */
  refused(f: FailedPrompt, p: HeldPrompt): void;
}

/** A prompt ready for the queue (already confined and given its ids by isolation). */
export interface Submission {
  id: string;
  username: string;
  role: 'admin' | 'user';
  /** the JSON text to POST (isolation's serialisation: numbers keep their exact text) */
  body: string;
  comfyUser: string | null;
  clientId: string;
  upstreamClientId: string;
  front: boolean;
}

/** What became of a submission: sent at once (ComfyUI's answer) or held (the gateway's answer). */
export type Outcome = { held: false; up: UpstreamResponse } | { held: true; number: number };

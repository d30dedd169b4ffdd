import type { WsHooks, WsSession } from '../ws';
import type { ClientIds } from './clientIds';
import type { Ledger } from './ledger';
import { filesOfOutput } from './outputs';
import type { PromptIds } from './promptIds';
import type { RunTracker } from './tracker';

/** JSON events without a prompt id that are never about a run (queue size, handshake, admin log stream). */
const ALWAYS = new Set(['status', 'feature_flags', 'logs']);
const MAX_CLIENT_ID = 256;
const ENDS = new Set(['execution_success', 'execution_error', 'execution_interrupted']);

const PROGRESS_HEADS = [Buffer.from('{"type": "progress", '), Buffer.from('{"type":"progress",')];
const PROMPT_ID_KEYS = [Buffer.from('"prompt_id": "'), Buffer.from('"prompt_id":"')];
const PROMPT_ID = Buffer.from('"prompt_id"');
/** Frames held per socket while its POST /prompt is unanswered, and for how long at most. */
const HOLD_MAX = 512;
const HOLD_MS = 15_000;
const SAME: Pick<PromptIds, 'toClient' | 'inFlight' | 'onSettled'> = {
  toClient: (id) => id,
  inFlight: () => false,
  onSettled: () => undefined,
};

/**
 * The prompt id of a `progress` frame (one per sampler step, the bulk of the traffic) without parsing it: its data
 * is flat, and an unescaped `"prompt_id"` can only be a key, so exactly one of them is the one. Anything unusual
 * returns null and goes through JSON.parse.
 */
function progressPromptId(data: Buffer): string | null {
  if (!PROGRESS_HEADS.some((h) => data.length > h.length && data.compare(h, 0, h.length, 0, h.length) === 0)) return null;
  for (const key of PROMPT_ID_KEYS) {
    const at = data.indexOf(key);
    if (at < 0) continue;
    if (data.indexOf(PROMPT_ID, at + 1) >= 0) return null;
    const start = at + key.length;
    const end = data.indexOf(0x22, start);
    if (end < 0) return null;
    const id = data.toString('latin1', start, end);
    return /^[A-Za-z0-9_-]{1,128}$/.test(id) ? id : null;
  }
  return null;
}

/**
 * The isolating WebSocket hooks (DESIGN §7): clientIds bound to users, the `status` sid mapped back, and every
 * frame that belongs to someone else's prompt dropped. Applies to admins too: a socket shows its owner's runs.
 *
 * Frames that name no prompt (legacy previews type 1, progress text type 3 — which ComfyUI sends to every
 * socket — and custom events) go to a socket only while that very socket is between the start and the end of one
 * of its user's prompts: ComfyUI writes each socket in order, so this holds even when sockets of different users
 * deliver out of step. Custom events also pass while the queue is known to be idle.
 */
export function createIsolationWsHooks(deps: {
  clientIds: ClientIds;
  ledger: Ledger;
  tracker: RunTracker;
  promptIds?: Pick<PromptIds, 'toClient' | 'inFlight' | 'onSettled'>;
}): WsHooks {
  const { clientIds, ledger, tracker } = deps;
  const ids = deps.promptIds ?? SAME;
  // Frames naming a prompt the ledger cannot place yet, held while that socket's POST /prompt is unanswered (older
  // ComfyUI makes its own ids, and its execution_start can beat its answer to the gateway). Kept in order per socket.
  const held = new Map<WsSession, { frames: { data: Buffer; isBinary: boolean }[]; timer: NodeJS.Timeout }>();
  const mayHold = (s: WsSession) => !!s.upstreamClientId && ids.inFlight(s.upstreamClientId);
  function hold(s: WsSession, data: Buffer, isBinary: boolean): null {
    let h = held.get(s);
    if (!h) {
      const timer = setTimeout(() => release(s), HOLD_MS);
      timer.unref();
      held.set(s, (h = { frames: [], timer }));
    }
    if (h.frames.length < HOLD_MAX) h.frames.push({ data, isBinary });
    return null;
  }
  // Re-decides the held frames now that the answer is in: the socket's own prompts go out, the rest is dropped.
  function release(s: WsSession): void {
    const h = held.get(s);
    if (!h) return;
    clearTimeout(h.timer);
    held.delete(s);
    for (const f of h.frames) {
      const out = f.isBinary ? binary(s, f.data, false) : json(s, f.data, false);
      if (out !== null && !s.detached && s.client && s.client.readyState === 1) s.client.send(out, { binary: f.isBinary });
    }
  }
  ids.onSettled((cid) => {
    for (const s of [...held.keys()]) if (s.upstreamClientId === cid && !ids.inFlight(cid)) release(s);
  });
  /** The owner of a prompt ComfyUI names, with the id the client knows it by. */
  const place = (upstreamId: string) => {
    const id = ids.toClient(upstreamId);
    return { id, owner: ledger.owner(id) };
  };
  // upstream id → the clientId we invented for a socket that asked for none (to answer its `status` sid).
  const invented = new Map<string, string>();
  // socket → the prompt of its user it is currently showing (from that socket's own events)
  const showing = new WeakMap<WsSession, string>();

  function clientSide(s: WsSession): string | null {
    return (s.upstreamClientId ? invented.get(s.upstreamClientId) : undefined) ?? s.clientId ?? null;
  }

  function json(s: WsSession, data: Buffer, canHold = true): Buffer | string | null {
    if (canHold && held.has(s)) return hold(s, data, false);
    const fast = progressPromptId(data);
    if (fast !== null) {
      const { id, owner } = place(fast);
      if (!owner && canHold && mayHold(s)) return hold(s, data, false);
      if (!owner || owner !== s.principal.username) return null;
      tracker.onPromptEvent('progress', id, owner, {});
      if (showing.get(s) !== id) showing.set(s, id);
      return id === fast ? data : data.toString('utf8').replace(`"${fast}"`, JSON.stringify(id));
    }
    let msg: { type?: unknown; data?: unknown };
    try {
      msg = JSON.parse(data.toString('utf8'));
    } catch {
      return null;
    }
    if (!msg || typeof msg !== 'object') return null;
    const type = typeof msg.type === 'string' ? msg.type : '';
    const d = msg.data && typeof msg.data === 'object' && !Array.isArray(msg.data) ? (msg.data as Record<string, unknown>) : null;
    if (type === 'status') {
      // queue counts for everyone: never held behind a prompt's frames
      tracker.onStatus();
      if (d && 'sid' in d) {
        // ComfyUI names the upstream id; the browser must see the id it knows (it reuses it for prompts).
        const mine = d.sid === s.upstreamClientId ? clientSide(s) : null;
        const out = { ...msg, data: { ...d } } as { type: string; data: Record<string, unknown> };
        if (mine) out.data.sid = mine;
        else delete out.data.sid;
        return JSON.stringify(out);
      }
      return data;
    }
    const upstreamPid = d?.prompt_id;
    if (typeof upstreamPid === 'string') {
      const { id: pid, owner } = place(upstreamPid);
      if (!owner && canHold && mayHold(s)) return hold(s, data, false);
      if (!owner || owner !== s.principal.username) {
        // Its own prompt left the ledger (evicted by newer ones): this socket no longer shows a run of its user's.
        if (showing.get(s) === pid) showing.delete(s);
        return null;
      }
      tracker.onPromptEvent(type, pid, owner, d!);
      if (ENDS.has(type) || (type === 'executing' && d!.node === null)) {
        if (showing.get(s) === pid) showing.delete(s);
      } else if (showing.get(s) !== pid) showing.set(s, pid);
      if (type === 'executed') ledger.addFiles(pid, filesOfOutput(d!.output));
      return pid === upstreamPid ? data : JSON.stringify({ ...msg, data: { ...d, prompt_id: pid } });
    }
    if (ALWAYS.has(type)) return data;
    // No prompt id: it belongs to whatever is running (or to nobody's run when the queue is known idle).
    return showing.has(s) || tracker.idle() ? data : null;
  }

  function binary(s: WsSession, data: Buffer, canHold = true): Buffer | null {
    if (canHold && held.has(s)) return hold(s, data, true);
    if (data.length < 4) return null;
    const type = data.readUInt32BE(0);
    if (type === 4 && data.length >= 8) {
      // PREVIEW_IMAGE_WITH_METADATA: 4B type · 4B metadata length · metadata JSON (names the prompt) · image
      const len = data.readUInt32BE(4);
      if (8 + len <= data.length) {
        let pid: unknown;
        try {
          pid = (JSON.parse(data.toString('utf8', 8, 8 + len)) as { prompt_id?: unknown })?.prompt_id;
        } catch {
          pid = undefined;
        }
        if (typeof pid === 'string') {
          const placed = place(pid);
          if (!placed.owner && canHold && mayHold(s)) return hold(s, data, true);
          if (placed.owner !== s.principal.username) return null;
          if (placed.id === pid) return data;
          const meta = Buffer.from(JSON.stringify({ ...JSON.parse(data.toString('utf8', 8, 8 + len)), prompt_id: placed.id }));
          const head = Buffer.alloc(8);
          head.writeUInt32BE(4, 0);
          head.writeUInt32BE(meta.length, 4);
          return Buffer.concat([head, meta, data.subarray(8 + len)]);
        }
      }
    }
    // Legacy previews (1), progress text (3, sent with no sid at all) and anything else: the running prompt's owner only.
    return showing.has(s) ? data : null;
  }

  return {
    upstreamClientId(principal, clientId) {
      let id = clientId && clientId.length <= MAX_CLIENT_ID ? clientId : null;
      let fresh = false;
      if (!id) {
        id = clientIds.fresh();
        fresh = true;
      }
      const up = clientIds.upstreamFor(principal.username, id);
      if (fresh) invented.set(up, id);
      return up;
    },
    fromUpstream(s, data, isBinary) {
      return isBinary ? binary(s, data) : json(s, data);
    },
    onClose(s) {
      const h = held.get(s);
      if (h) {
        clearTimeout(h.timer);
        held.delete(s);
      }
      if (s.upstreamClientId) invented.delete(s.upstreamClientId);
    },
  };
}

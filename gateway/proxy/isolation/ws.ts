import type { WsHooks, WsSession } from '../ws';
import type { ClientIds } from './clientIds';
import type { Ledger } from './ledger';
import { filesOfOutput } from './outputs';
import type { RunTracker } from './tracker';

/** JSON events without a prompt id that are never about a run (queue size, handshake, admin log stream). */
const ALWAYS = new Set(['status', 'feature_flags', 'logs']);
const MAX_CLIENT_ID = 256;
const ENDS = new Set(['execution_success', 'execution_error', 'execution_interrupted']);

const PROGRESS_HEADS = [Buffer.from('{"type": "progress", '), Buffer.from('{"type":"progress",')];
const PROMPT_ID_KEYS = [Buffer.from('"prompt_id": "'), Buffer.from('"prompt_id":"')];
const PROMPT_ID = Buffer.from('"prompt_id"');

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
export function createIsolationWsHooks(deps: { clientIds: ClientIds; ledger: Ledger; tracker: RunTracker }): WsHooks {
  const { clientIds, ledger, tracker } = deps;
  // upstream id → the clientId we invented for a socket that asked for none (to answer its `status` sid).
  const invented = new Map<string, string>();
  // socket → the prompt of its user it is currently showing (from that socket's own events)
  const showing = new WeakMap<WsSession, string>();

  function clientSide(s: WsSession): string | null {
    return (s.upstreamClientId ? invented.get(s.upstreamClientId) : undefined) ?? s.clientId ?? null;
  }

  function json(s: WsSession, data: Buffer): Buffer | string | null {
    const fast = progressPromptId(data);
    if (fast !== null) {
      const owner = ledger.owner(fast);
      if (!owner || owner !== s.principal.username) return null;
      tracker.onPromptEvent('progress', fast, owner, {});
      if (showing.get(s) !== fast) showing.set(s, fast);
      return data;
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
    const pid = d?.prompt_id;
    if (typeof pid === 'string') {
      const owner = ledger.owner(pid);
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
      return data;
    }
    if (ALWAYS.has(type)) return data;
    // No prompt id: it belongs to whatever is running (or to nobody's run when the queue is known idle).
    return showing.has(s) || tracker.idle() ? data : null;
  }

  function binary(s: WsSession, data: Buffer): Buffer | null {
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
        if (typeof pid === 'string') return ledger.owner(pid) === s.principal.username ? data : null;
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
      if (s.upstreamClientId) invented.delete(s.upstreamClientId);
    },
  };
}

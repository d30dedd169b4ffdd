import type { WsHooks, WsSession } from '../ws';
import type { ClientIds } from './clientIds';
import type { Ledger } from './ledger';
import { filesOfOutput } from './outputs';
import type { RunTracker } from './tracker';

/** JSON events without a prompt id that are never about a run (queue size, handshake, admin log stream). */
const ALWAYS = new Set(['status', 'feature_flags', 'logs']);
const MAX_CLIENT_ID = 256;

/**
 * The isolating WebSocket hooks (DESIGN §7): clientIds bound to users, the `status` sid mapped back, and every
 * frame that belongs to someone else's prompt dropped. Applies to admins too: a socket shows its owner's runs.
 */
export function createIsolationWsHooks(deps: { clientIds: ClientIds; ledger: Ledger; tracker: RunTracker }): WsHooks {
  const { clientIds, ledger, tracker } = deps;
  // upstream id → the clientId we invented for a socket that asked for none (to answer its `status` sid).
  const invented = new Map<string, string>();

  function clientSide(s: WsSession): string | null {
    return (s.upstreamClientId ? invented.get(s.upstreamClientId) : undefined) ?? s.clientId ?? null;
  }

  function json(s: WsSession, data: Buffer): Buffer | string | null {
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
      if (!owner || owner !== s.principal.username) return null;
      tracker.onPromptEvent(type, pid, owner, d!);
      if (type === 'executed') ledger.addFiles(pid, filesOfOutput(d!.output));
      return data;
    }
    if (ALWAYS.has(type)) return data;
    // No prompt id: it belongs to whatever is running (or to nobody's run when the queue is known idle).
    return tracker.runningFor(s.principal.username) || tracker.idle() ? data : null;
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
    return tracker.runningFor(s.principal.username) ? data : null;
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

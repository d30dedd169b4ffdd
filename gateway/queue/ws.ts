import type { WsHooks, WsSession } from '../proxy/ws';

const STATUS_HEADS = [Buffer.from('{"type": "status"'), Buffer.from('{"type":"status"')];

/**
 * The queue's WebSocket side: every `status` frame carries the socket user's own count (held prompts included),
 * the gateway tells a user's sockets when that count changes without ComfyUI knowing, and a held prompt ComfyUI
 * refused at release reaches its owner as ComfyUI's own `execution_error`. Runs after isolation's hooks.
 */
export function createQueueWsHooks(deps: {
  /** the count a user's `status` shows */
  countFor(s: WsSession): number;
  /** a `status` passed: the worker's queue changed */
  onStatus(): void;
}) {
  const sessions = new Set<WsSession>();
  const statusFrame = (s: WsSession) =>
    JSON.stringify({ type: 'status', data: { status: { exec_info: { queue_remaining: deps.countFor(s) } } } });
  const open = (s: WsSession) => !s.detached && s.client && s.client.readyState === 1;

  const hooks: WsHooks = {
    fromUpstream(s, data, isBinary) {
      sessions.add(s);
      if (isBinary || !STATUS_HEADS.some((h) => data.length > h.length && data.compare(h, 0, h.length, 0, h.length) === 0)) return data;
      deps.onStatus();
      let msg: { type?: string; data?: { status?: { exec_info?: Record<string, unknown> } } };
      try {
        msg = JSON.parse(data.toString('utf8'));
      } catch {
        return data;
      }
      const info = msg.data?.status?.exec_info;
      if (!info || typeof info !== 'object') return data;
      info.queue_remaining = deps.countFor(s);
      return JSON.stringify(msg);
    },
    onClose(s) {
      sessions.delete(s);
    },
  };

  return {
    hooks,
    /** sends every open socket its current count */
    pushCounts() {
      for (const s of sessions) if (open(s)) s.client!.send(statusFrame(s));
    },
    /** sends a JSON event to the sockets of `username` (those opened with `clientId` when one is given) */
    sendTo(username: string, clientId: string, msg: object) {
      const text = JSON.stringify(msg);
      for (const s of sessions)
        if (open(s) && s.principal.username === username && (!clientId || s.clientId === clientId || s.clientId === null))
          s.client!.send(text);
    },
  };
}

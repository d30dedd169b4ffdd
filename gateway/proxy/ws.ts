import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import WebSocket, { WebSocketServer, type RawData } from 'ws';
import { invalidates, type Invalidation, type Revocations } from '../auth/revocations';
import { AppError } from '../errors';
import { getContext } from '../http/context';
import { rejectUpgrade } from '../http/render';
import type { Logger } from '../log';
import { sanitizeHeaders, stripTokenQuery } from './headers';
import type { WorkerSockets } from './wsExtra';
import { WS_REVOKED_CODE, type WsHooks, type WsSession } from './wsHooks';
export { composeWsHooks, WS_REVOKED_CODE, type WsHooks, type WsSession } from './wsHooks';

const toBuffer = (d: RawData): Buffer => (Buffer.isBuffer(d) ? d : Array.isArray(d) ? Buffer.concat(d) : Buffer.from(d));
// 1005/1006/1015 are reserved: they describe a close, they cannot be sent in one.
const sendable = (code: number) => (code >= 1000 && code <= 1014 && ![1004, 1005, 1006].includes(code)) || (code >= 3000 && code <= 4999);

/** The WebSocket relay: the gateway ends the client's socket itself and opens its own to ComfyUI. */
export function createWsRelay(deps: {
  upstreamOrigin: string;
  cookieName: string;
  logger: Logger;
  pingIntervalMs?: number;
  hooks?: WsHooks;
  /** open relayed sockets one principal may hold (each holds one to ComfyUI) */
  maxPerUser?: number;
  /** credential invalidations to act on: the sockets opened with that credential are closed */
  revocations?: Revocations;
  /** the other ComfyUI workers' sockets, opened through the queue's Workers: each socket relays their events too */
  workerSockets?: WorkerSockets;
}) {
  const maxPerUser = deps.maxPerUser ?? 64;
  // ComfyUI itself refuses client messages over 4 MB; bigger ones are not buffered here either.
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 4 * 1024 * 1024 });
  const sessions = new Set<WsSession>();
  // The live session holding each upstream client id, and the clients a reconnect left behind (kept open, silent).
  const holders = new Map<string, WsSession>();
  // The clients a reconnect left behind, with the session each was opened in (its credential can still be revoked).
  const silenced = new Map<WebSocket, WsSession>();
  // Upgrades admitted but still connecting upstream: a revocation meanwhile must stop them too.
  const connecting = new Set<WsSession>();
  const alive = new WeakMap<WebSocket, boolean>();
  const hooks = deps.hooks ?? {};
  const wsOrigin = deps.upstreamOrigin.replace(/^http/, 'ws');

  // ComfyUI sends no pings; we ping clients so middleboxes keep idle sockets, and drop the dead ones.
  const pinger = setInterval(() => {
    for (const c of [...[...sessions].map((s) => s.client), ...silenced.keys()]) {
      if (!c || c.readyState !== WebSocket.OPEN) continue;
      if (alive.get(c) === false) {
        c.terminate();
        continue;
      }
      alive.set(c, false);
      c.ping();
    }
  }, deps.pingIntervalMs ?? 25_000);
  pinger.unref();

  /** Closes what was opened with a credential that is no longer valid: the client with 1008, its upstream at once. */
  function revoke(e: Invalidation): void {
    const hit = (x: WsSession) => invalidates(e, x.principal);
    const closeClient = (c: WebSocket) => {
      if (c.readyState !== WebSocket.OPEN && c.readyState !== WebSocket.CONNECTING) return;
      c.close(WS_REVOKED_CODE, 'credential revoked');
      // A client that never answers the close frame is cut off instead of held for ws's 30 s closing timeout.
      setTimeout(() => c.terminate(), 1000).unref();
    };
    for (const x of connecting) if (hit(x)) x.revoked = true;
    for (const [c, x] of [...silenced]) {
      if (!hit(x)) continue;
      silenced.delete(c);
      closeClient(c);
    }
    for (const x of [...sessions]) {
      if (!hit(x)) continue;
      // Client first: the upstream's close handler then finds it closing and leaves the 1008 alone.
      if (x.client) closeClient(x.client);
      x.upstream?.terminate();
    }
  }
  const unsubscribe = deps.revocations?.on(revoke);

  function relay(s: WsSession, client: WebSocket, upstream: WebSocket, clientSocket: Duplex) {
    s.client = client;
    alive.set(client, true);
    client.on('pong', () => alive.set(client, true));
    sessions.add(s);
    if (s.upstreamClientId) holders.set(s.upstreamClientId, s);
    // Frames that arrived from ComfyUI together leave together: one write per burst, not one per frame (ws emits
    // every frame of a read synchronously, so the tick ends after the last of them).
    let corked = false;
    const uncork = () => {
      corked = false;
      clientSocket.uncork();
    };
    upstream.on('message', (data, isBinary) => {
      const buf = toBuffer(data);
      const out = hooks.fromUpstream ? hooks.fromUpstream(s, buf, isBinary) : buf;
      if (out === null || client.readyState !== WebSocket.OPEN) return;
      if (!corked) {
        corked = true;
        clientSocket.cork();
        process.nextTick(uncork);
      }
      client.send(out, { binary: isBinary });
    });
    client.on('message', (data, isBinary) => {
      const buf = toBuffer(data);
      const out = hooks.fromClient ? hooks.fromClient(s, buf, isBinary) : buf;
      if (out !== null && upstream.readyState === WebSocket.OPEN) upstream.send(out, { binary: isBinary });
    });
    const finish = () => {
      if (!sessions.delete(s)) return;
      if (s.upstreamClientId && holders.get(s.upstreamClientId) === s) holders.delete(s.upstreamClientId);
      hooks.onClose?.(s);
    };
    upstream.on('close', (code, reason) => {
      finish();
      if (s.detached) return;
      if (client.readyState === WebSocket.OPEN) client.close(sendable(code) ? code : 1011, reason);
    });
    client.on('close', (code, reason) => {
      silenced.delete(client);
      finish();
      if (upstream.readyState === WebSocket.OPEN) upstream.close(sendable(code) ? code : 1000, reason);
      else upstream.terminate();
    });
    upstream.on('error', (e) => deps.logger.debug({ err: e.message }, 'upstream ws error'));
    client.on('error', (e) => deps.logger.debug({ err: e.message }, 'client ws error'));
  }

  /**
   * ComfyUI forgets a client id when *any* socket that used it closes, so a reconnect that overlaps the old
   * socket would go deaf once the old one closes. Close the old upstream first (its client stays open and silent,
   * as ComfyUI's own takeover leaves it), then connect the new one.
   */
  function release(upstreamClientId: string | null): Promise<void> {
    const prev = upstreamClientId ? holders.get(upstreamClientId) : undefined;
    if (!prev?.upstream) return Promise.resolve();
    prev.detached = true;
    if (prev.client) silenced.set(prev.client, prev);
    holders.delete(upstreamClientId!);
    const up = prev.upstream;
    return new Promise<void>((resolve) => {
      const done = () => setTimeout(resolve, 25);
      if (up.readyState === WebSocket.CLOSED) return done();
      const t = setTimeout(() => {
        up.terminate();
        done();
      }, 1000);
      up.once('close', () => {
        clearTimeout(t);
        done();
      });
      up.close(1000, 'replaced by a newer connection');
    });
  }

  return {
    /** Completes an admitted upgrade: connect upstream first, so a down ComfyUI refuses the handshake cleanly. */
    handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
      const ctx = getContext(req);
      const principal = ctx.principal!;
      const open = [...sessions].filter((x) => x.principal.username === principal.username).length;
      if (open >= maxPerUser) {
        rejectUpgrade(socket, new AppError(429, 'RATE_LIMITED', 'Too many open WebSockets for this user', { limit: maxPerUser }));
        return;
      }
      const params = new URLSearchParams(stripTokenQuery(ctx.route.query));
      const clientId = params.get('clientId');
      const s: WsSession = { principal, clientId, upstreamClientId: clientId };
      connecting.add(s);
      if (hooks.upstreamClientId) {
        s.upstreamClientId = hooks.upstreamClientId(principal, clientId);
        if (s.upstreamClientId) params.set('clientId', s.upstreamClientId);
        else params.delete('clientId');
      }
      const qs = params.toString();
      const headers = sanitizeHeaders(req, ctx, { cookieName: deps.cookieName, upstreamOrigin: deps.upstreamOrigin });
      void release(s.upstreamClientId).then(() => connectUpstream(req, socket, head, s, ctx.route.forwardPath, qs, headers));
    },
    /** Live sessions (for isolation and tests). */
    sessions(): ReadonlySet<WsSession> {
      return sessions;
    },
    /** Closes every relayed socket with `code` (1001 on shutdown). */
    closeAll(code = 1001, reason = 'server shutting down'): void {
      clearInterval(pinger);
      unsubscribe?.();
      for (const c of silenced.keys()) c.close(code, reason);
      for (const s of sessions) {
        s.client?.close(code, reason);
        s.upstream?.close(1000);
      }
    },
  };

  // Opens the upstream socket, then completes the client's handshake (or refuses it with 502).
  function connectUpstream(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    s: WsSession,
    forwardPath: string,
    qs: string,
    headers: IncomingHttpHeaders,
  ): void {
    if (socket.destroyed || s.revoked) {
      connecting.delete(s);
      if (!socket.destroyed) rejectUpgrade(socket, new AppError(401, 'TOKEN_REVOKED', 'This credential was revoked'));
      return void hooks.onClose?.(s);
    }
    const fwd: Record<string, string> = {};
    for (const k of ['comfy-user', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'user-agent', 'cookie', 'origin']) {
      const v = headers[k];
      if (typeof v === 'string') fwd[k] = v;
    }
    const upstream = new WebSocket(`${wsOrigin}${forwardPath}${qs ? `?${qs}` : ''}`, {
      headers: fwd,
      handshakeTimeout: 5000,
      perMessageDeflate: false,
      maxPayload: 64 * 1024 * 1024,
    });
    s.upstream = upstream;
    // ComfyUI may speak first (the `status` message); hold its frames until the client socket exists.
    const early: { data: Buffer; isBinary: boolean }[] = [];
    const onEarly = (d: RawData, isBinary: boolean) => early.push({ data: toBuffer(d), isBinary });
    upstream.on('message', onEarly);
    let settled = false;
    let abandoned = false;
    // A session that never reached relay(): its upstream socket goes, and its hooks still hear the end of it once.
    const abandon = () => {
      connecting.delete(s);
      if (abandoned || s.client) return;
      abandoned = true;
      upstream.terminate();
      hooks.onClose?.(s);
    };
    const fail = (why: string, err = new AppError(502, 'UPSTREAM_UNAVAILABLE', 'ComfyUI is not reachable right now')) => {
      if (settled) return;
      settled = true;
      deps.logger.warn({ why }, 'websocket upstream not connected');
      abandon();
      rejectUpgrade(socket, err);
    };
    upstream.once('error', (e) => fail(e.message));
    upstream.once('unexpected-response', (_r, res) => fail(`upstream answered ${res.statusCode}`));
    // Also after the upstream opened: ws refuses a malformed handshake (bad Upgrade, key, version, method) itself and
    // never calls back, and that upstream socket would otherwise stay open, buffering every broadcast, forever.
    socket.once('close', () => {
      settled = true;
      abandon();
    });
    upstream.once('open', () => {
      if (settled) return;
      if (s.revoked) return fail('credential revoked while connecting', new AppError(401, 'TOKEN_REVOKED', 'This credential was revoked'));
      settled = true;
      connecting.delete(s);
      wss.handleUpgrade(req, socket, head, (client) => {
        upstream.off('message', onEarly);
        relay(s, client, upstream, socket);
        if (deps.workerSockets) {
          const stop = deps.workerSockets(`${forwardPath}${qs ? `?${qs}` : ''}`, fwd, (data, isBinary) => {
            const out = hooks.fromUpstream ? hooks.fromUpstream(s, data, isBinary) : data;
            if (out !== null && client.readyState === WebSocket.OPEN) client.send(out, { binary: isBinary });
          });
          client.once('close', stop);
          upstream.once('close', stop);
        }
        for (const m of early) {
          const out = hooks.fromUpstream ? hooks.fromUpstream(s, m.data, m.isBinary) : m.data;
          if (out !== null) client.send(out, { binary: m.isBinary });
        }
      });
    });
  }
}

import type WebSocket from 'ws';
import type { Principal } from '../auth/principal';

/** One relayed WebSocket: the client's view and the upstream's. */
export interface WsSession {
  principal: Principal;
  /** the clientId the browser asked for (null when it asked for none) */
  clientId: string | null;
  /** the clientId used upstream */
  upstreamClientId: string | null;
  client?: WebSocket;
  upstream?: WebSocket;
  /** replaced by a newer socket with the same upstream id: the client stays open but hears nothing more */
  detached?: boolean;
  /** its credential was invalidated while the upstream socket was still connecting */
  revoked?: boolean;
}

/** Close code for sockets whose credential was invalidated (RFC 6455 "policy violation"). */
export const WS_REVOKED_CODE = 1008;

/** Isolation hooks; every one optional. Returning null drops a frame. */
export interface WsHooks {
  upstreamClientId?(principal: Principal, clientId: string | null): string | null;
  fromUpstream?(s: WsSession, data: Buffer, isBinary: boolean): Buffer | string | null;
  fromClient?(s: WsSession, data: Buffer, isBinary: boolean): Buffer | string | null;
  /** once per session that was given an upstream client id, also when its handshake never completed */
  onClose?(s: WsSession): void;
}

/** Chains several hook sets: client ids map through each in turn; a frame dropped by one is dropped. */
export function composeWsHooks(list: WsHooks[]): WsHooks {
  const pipe =
    (pick: (h: WsHooks) => WsHooks['fromUpstream']) =>
    (s: WsSession, data: Buffer, isBinary: boolean): Buffer | string | null => {
      let cur: Buffer | string | null = data;
      for (const h of list) {
        const f = pick(h);
        if (!f || cur === null) continue;
        cur = f(s, Buffer.isBuffer(cur) ? cur : Buffer.from(cur), isBinary);
      }
      return cur;
    };
  return {
    upstreamClientId: (p, id) => list.reduce((cur, h) => (h.upstreamClientId ? h.upstreamClientId(p, cur) : cur), id),
    fromUpstream: pipe((h) => h.fromUpstream),
    fromClient: pipe((h) => h.fromClient),
    onClose: (s) => list.forEach((h) => h.onClose?.(s)),
  };
}

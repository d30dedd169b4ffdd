import os from 'node:os';
import type { IncomingMessage } from 'node:http';
import { API_KEY_PRINCIPAL } from '../auth/chain';
import { crossSite } from '../auth/csrf';
import type { Principal } from '../auth/principal';
import type { Logger } from '../log';
import type { UserStore } from '../users/types';
import { isDirectLoopback, parseIp, type ClientIp } from './clientIp';

/** True when the Host header names this machine (a loopback literal, `localhost`, or its own hostname). */
function hostIsLocal(req: IncomingMessage): boolean {
  const host = req.headers.host;
  if (host === undefined) return true; // HTTP/1.0 scripts send none; a browser always does
  const name = (/^\[([^\]]+)\](?::\d+)?$/.exec(host)?.[1] ?? host.replace(/:\d+$/, '')).toLowerCase().replace(/\.$/, '');
  if (name === 'localhost' || name.endsWith('.localhost')) return true;
  const addr = parseIp(name);
  if (addr) return addr.range() === 'loopback';
  return name === os.hostname().toLowerCase();
}

/**
 * True for a request from a person or script on this machine itself — what first-run registration without the setup
 * code and `allow_loopback_without_auth` grant privilege for: direct loopback (no forwarding header), from a socket
 * that is not a configured proxy (a loopback proxy listed in `trusted_proxies` forwards the network, with or without
 * headers — a bare nginx `proxy_pass` adds none, and a client can strip some through `Connection:`), a Host naming
 * this machine (DNS rebinding), and not a browser acting for another site.
 */
export function createIsLocal(clientIp: Pick<ClientIp, 'fromTrustedProxy'>): (req: IncomingMessage) => boolean {
  return (req) =>
    isDirectLoopback(req) && !clientIp.fromTrustedProxy(req) && hostIsLocal(req) && !crossSite(req, (req.headers.host ?? '').toLowerCase());
}

/**
 * `allow_loopback_without_auth` (off by default): a principal for a credential-less request only when it comes from
 * this machine (`isLocal`, see createIsLocal: a tunnel daemon or proxy on this host does not make the internet local;
 * nor does a page of another site posting to 127.0.0.1, nor DNS rebinding).
 * The identity is `loopback_identity`: `api-key` (the static-key admin principal) or a gateway username.
 */
export function createLoopbackPrincipal(deps: {
  config: { allow_loopback_without_auth: boolean; loopback_identity: string };
  users?: UserStore;
  logger: Logger;
  isLocal: (req: IncomingMessage) => boolean;
}): ((req: IncomingMessage) => Principal | null) | undefined {
  const { config, users, logger, isLocal } = deps;
  if (!config.allow_loopback_without_auth) return undefined;
  const identity = config.loopback_identity.trim().toLowerCase();
  let warned = false;
  return (req) => {
    if (!isLocal(req)) return null;
    if (identity === 'api-key') return { ...API_KEY_PRINCIPAL, source: 'loopback' };
    const u = users?.get(identity);
    if (!u || u.disabled) {
      if (!warned)
        logger.warn({ loopback_identity: identity }, 'loopback_identity names no enabled user; loopback requests need credentials');
      warned = true;
      return null;
    }
    warned = false;
    return { username: u.username, role: u.role, permissions: [...u.permissions], source: 'loopback' };
  };
}

import os from 'node:os';
import type { IncomingMessage } from 'node:http';
import { API_KEY_PRINCIPAL } from '../auth/chain';
import type { Principal } from '../auth/principal';
import type { Logger } from '../log';
import type { UserStore } from '../users/types';
import { isDirectLoopback, parseIp } from './clientIp';

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

/** True when a browser sent this on behalf of another site (Fetch metadata, or an Origin that is not this host). */
function crossSiteBrowser(req: IncomingMessage): boolean {
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return true;
  const origin = req.headers.origin;
  if (origin === undefined) return false;
  try {
    return new URL(origin).host.toLowerCase() !== (req.headers.host ?? '').toLowerCase();
  } catch {
    return true;
  }
}

/**
 * `allow_loopback_without_auth` (off by default): a principal for a credential-less request only when the socket is
 * loopback and no forwarding header of any kind is present (isDirectLoopback — a tunnel daemon on this host adds
 * them). Two browser attacks on "local" are refused too: a page of another site posting to 127.0.0.1 (Origin /
 * Sec-Fetch-Site), and DNS rebinding (a Host that does not name this machine).
 * The identity is `loopback_identity`: `api-key` (the static-key admin principal) or a gateway username.
 */
export function createLoopbackPrincipal(deps: {
  config: { allow_loopback_without_auth: boolean; loopback_identity: string };
  users?: UserStore;
  logger: Logger;
}): ((req: IncomingMessage) => Principal | null) | undefined {
  const { config, users, logger } = deps;
  if (!config.allow_loopback_without_auth) return undefined;
  const identity = config.loopback_identity.trim().toLowerCase();
  let warned = false;
  return (req) => {
    if (!isDirectLoopback(req) || !hostIsLocal(req) || crossSiteBrowser(req)) return null;
    if (identity === 'api-key') return { ...API_KEY_PRINCIPAL, source: 'loopback' };
    const u = users?.get(identity);
    if (!u || u.disabled) {
      if (!warned) logger.warn({ loopback_identity: identity }, 'loopback_identity names no enabled user; loopback requests need credentials');
      warned = true;
      return null;
    }
    warned = false;
    return { username: u.username, role: u.role, permissions: [...u.permissions], source: 'loopback' };
  };
}

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Gate } from '../app';
import { AppError } from '../errors';
import { sendError } from '../http/render';
import type { ClientIp } from './clientIp';
import type { IpLists } from './ipLists';

/** The HSTS value sent on every HTTPS response (a year; browsers ignore it over plain HTTP anyway). */
export const HSTS = 'max-age=31536000; includeSubDomains';

const HOST = /^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/** The path (and query) of a request target, whether origin-form (`/x`) or absolute-form (`http://h/x`). */
function pathOf(url: string | undefined): string {
  if (!url) return '/';
  if (url.startsWith('/')) return url;
  try {
    const u = new URL(url);
    return u.pathname + u.search;
  } catch {
    return '/';
  }
}

/**
 * The front door's preflight (runs before anything else on every HTTP request): refuse listed IPs first, then
 * over plain HTTP with `force_https` answer 308 to the https:// URL, and over HTTPS add HSTS to whatever follows.
 * "HTTPS" is the client-IP module's decision: a TLS socket, or a trusted proxy's `X-Forwarded-Proto` — never an
 * untrusted client's header.
 */
export function createPreflight(deps: { config: { force_https: boolean }; clientIp: ClientIp; ipLists: IpLists }) {
  const { config, clientIp, ipLists } = deps;
  return (req: IncomingMessage, res: ServerResponse): boolean => {
    try {
      ipLists.refuse(req, clientIp(req), pathOf(req.url).split('?')[0]);
    } catch (e) {
      sendError(req, res, e);
      return true;
    }
    if (clientIp.isSecure(req)) {
      res.setHeader('Strict-Transport-Security', HSTS);
      return false;
    }
    if (!config.force_https) return false;
    const host = clientIp.originalHost(req);
    if (!host || host.length > 300 || !HOST.test(host)) {
      sendError(req, res, new AppError(400, 'INVALID_REQUEST', 'HTTPS is required, and this request names no valid host to redirect to'));
      return true;
    }
    const location = `https://${host}${pathOf(req.url)}`;
    res.statusCode = 308;
    res.setHeader('Location', location);
    res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.setHeader('Cache-Control', 'no-store');
    const body = `HTTPS is required: ${location}\n`;
    res.setHeader('Content-Length', Buffer.byteLength(body));
    res.end(req.method === 'HEAD' ? undefined : body);
    req.resume();
    return true;
  };
}

/**
 * With `force_https`, a WebSocket upgrade over plain HTTP is refused (403 HTTPS_REQUIRED): browsers do not follow
 * redirects on upgrades, and the preflight that redirects plain HTTP requests does not see upgrades.
 */
export function createHttpsUpgradeGate(deps: { config: { force_https: boolean } }): Gate {
  return (req, ctx) => {
    if (!deps.config.force_https || ctx.secure || req.headers.upgrade === undefined) return;
    throw new AppError(403, 'HTTPS_REQUIRED', 'This gateway only accepts WebSockets over HTTPS (wss://)');
  };
}

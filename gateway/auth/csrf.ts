import type { IncomingMessage } from 'node:http';
import { AppError } from '../errors';
import type { Principal } from './principal';

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

/** The host (host[:port]) of an Origin or Referer value; null when absent or unparsable. */
function hostOf(value: string | undefined): string | null {
  if (!value || value === 'null') return null;
  try {
    return new URL(value).host.toLowerCase();
  } catch {
    return null;
  }
}

/** True when a browser says the request comes from another site than `own` (host[:port]): Fetch metadata, else
 * Origin, else Referer. The one place that reads them (the loopback bypass asks it too). */
export function crossSite(req: IncomingMessage, own: string): boolean {
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return true;
  if (req.headers.origin !== undefined) return hostOf(req.headers.origin) !== own;
  return req.headers.referer !== undefined && hostOf(req.headers.referer) !== own;
}

/**
 * The CSRF rule (DESIGN §4): a cookie-authenticated state change or WebSocket upgrade must come from a page of
 * the gateway's own origin. Header-authenticated scripts are exempt (a browser cannot forge those headers).
 * Cloudflare Access is ambient too — its edge adds the assertion from its own cookie — so a browser request
 * that says it comes from another site is refused; its service-token scripts send no Origin and pass.
 * `getChangesState` (ComfyUI-Manager) extends the rule to GET/HEAD: a Lax cookie rides a cross-site navigation.
 */
export function checkCsrf(
  req: IncomingMessage,
  principal: Principal | null,
  opts: { ownHost?: string; isUpgrade?: boolean; sessionForm?: boolean; getChangesState?: boolean } = {},
): void {
  // Behind a trusted proxy that rewrites Host, the browser's origin is the one it forwarded.
  const own = (opts.ownHost ?? req.headers.host ?? '').toLowerCase();
  const source = principal?.source;
  if (!opts.isUpgrade && SAFE.has(req.method ?? 'GET')) {
    if (opts.getChangesState && (source === 'cookie' || source === 'cf-access') && crossSite(req, own)) throw rejected(req);
    return;
  }
  if (source === 'cookie') {
    const origin = hostOf(req.headers.origin) ?? (req.headers.origin === undefined ? hostOf(req.headers.referer) : null);
    if (!own || origin !== own) throw rejected(req);
    return;
  }
  if (source === 'cf-access') {
    if (crossSite(req, own)) throw rejected(req);
    return;
  }
  // Login CSRF: a foreign page must not sign a browser in (or out) as someone else. Browsers always send
  // Origin on cross-site POSTs; scripts send none, so only a present, foreign Origin is refused.
  if (req.headers.origin !== undefined && hostOf(req.headers.origin) !== own && opts.sessionForm) throw rejected(req);
}

function rejected(req: IncomingMessage): AppError {
  return new AppError(403, 'CSRF_REJECTED', 'Cross-site request refused: the Origin does not match this gateway', {
    origin: req.headers.origin ?? null,
  });
}

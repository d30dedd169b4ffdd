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

/**
 * The CSRF rule (DESIGN §4): a cookie-authenticated state change or WebSocket upgrade must come from a page of
 * the gateway's own origin. Header-authenticated scripts are exempt (a browser cannot forge those headers).
 */
export function checkCsrf(req: IncomingMessage, principal: Principal | null, opts: { isUpgrade?: boolean; sessionForm?: boolean } = {}): void {
  const isUpgrade = !!opts.isUpgrade;
  if (!isUpgrade && SAFE.has(req.method ?? 'GET')) return;
  if (!principal || principal.source !== 'cookie') {
    // Login CSRF: a foreign page must not sign a browser in (or out) as someone else. Browsers always send
    // Origin on cross-site POSTs; scripts send none, so only a present, foreign Origin is refused.
    if (req.headers.origin !== undefined && hostOf(req.headers.origin) !== (req.headers.host ?? '').toLowerCase() && opts.sessionForm)
      throw rejected(req);
    return;
  }
  const own = (req.headers.host ?? '').toLowerCase();
  const origin = hostOf(req.headers.origin) ?? (req.headers.origin === undefined ? hostOf(req.headers.referer) : null);
  if (!own || origin !== own) throw rejected(req);
}

function rejected(req: IncomingMessage): AppError {
  return new AppError(403, 'CSRF_REJECTED', 'Cross-site request refused: the Origin does not match this gateway', {
    origin: req.headers.origin ?? null,
  });
}

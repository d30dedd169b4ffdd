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
export function checkCsrf(req: IncomingMessage, principal: Principal | null, isUpgrade = false): void {
  if (!principal || principal.source !== 'cookie') return;
  if (!isUpgrade && SAFE.has(req.method ?? 'GET')) return;
  const own = (req.headers.host ?? '').toLowerCase();
  const origin = hostOf(req.headers.origin) ?? (req.headers.origin === undefined ? hostOf(req.headers.referer) : null);
  if (!own || origin !== own) {
    throw new AppError(403, 'CSRF_REJECTED', 'Cross-site request refused: the Origin does not match this gateway', {
      origin: req.headers.origin ?? null,
    });
  }
}

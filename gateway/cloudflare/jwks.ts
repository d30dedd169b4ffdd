import crypto, { type KeyObject } from 'node:crypto';
import type { Logger } from '../log';

/** A team's signing keys, fetched from its certs endpoint and cached by `kid`. */
export interface JwksCache {
  /** the RSA public key for `kid`, or null when the team does not publish one (refetching at a bounded rate) */
  getKey(kid: string): Promise<KeyObject | null>;
  /** how many times the endpoint was fetched (for tests and diagnostics) */
  fetches(): number;
}

const MAX_BODY = 256 * 1024;

/**
 * JWKS cache for Cloudflare Access: keys by `kid`; an unknown `kid` refetches at most once per `minRefetchMs`
 * (so a flood of forged kids cannot turn the gateway into a fetch loop against the team domain); keys older than
 * `maxAgeMs` are refreshed on next use so a key the team removed stops being accepted. A failed fetch keeps the
 * keys we have. Only RSA keys meant for signatures (and RS256 when the JWK says) are kept.
 * `url` may be plain http (e.g. http://127.0.0.1:port for tests); in production it is https://<team>/cdn-cgi/access/certs.
 */
export function createJwksCache(deps: {
  url: string;
  logger: Logger;
  fetchImpl?: typeof fetch;
  minRefetchMs?: number;
  maxAgeMs?: number;
  timeoutMs?: number;
  now?: () => number;
}): JwksCache {
  const fetchImpl = deps.fetchImpl ?? fetch;
  const minRefetchMs = deps.minRefetchMs ?? 30_000;
  const maxAgeMs = deps.maxAgeMs ?? 3600_000;
  const now = deps.now ?? Date.now;
  let keys = new Map<string, KeyObject>();
  let fetchedAt = 0; // last successful fetch
  let attemptedAt = -Infinity; // last attempt, successful or not
  let count = 0;
  let inflight: Promise<void> | null = null;

  async function fetchKeys(): Promise<void> {
    attemptedAt = now();
    count++;
    try {
      const res = await fetchImpl(deps.url, {
        signal: AbortSignal.timeout(deps.timeoutMs ?? 5000),
        redirect: 'error',
        headers: { accept: 'application/json' },
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const text = await res.text();
      if (text.length > MAX_BODY) throw new Error('response too large');
      const body = JSON.parse(text) as { keys?: unknown };
      if (!Array.isArray(body.keys)) throw new Error('no "keys" array');
      const next = new Map<string, KeyObject>();
      for (const jwk of body.keys as Record<string, unknown>[]) {
        if (!jwk || typeof jwk !== 'object' || jwk.kty !== 'RSA' || typeof jwk.kid !== 'string') continue;
        if (jwk.use !== undefined && jwk.use !== 'sig') continue;
        if (jwk.alg !== undefined && jwk.alg !== 'RS256') continue;
        try {
          const key = crypto.createPublicKey({ key: { kty: 'RSA', n: jwk.n, e: jwk.e } as crypto.JsonWebKey, format: 'jwk' });
          if ((key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) continue;
          next.set(jwk.kid, key);
        } catch {
          // a malformed key is skipped; the others still count
        }
      }
      keys = next;
      fetchedAt = now();
      deps.logger.debug({ url: deps.url, kids: [...next.keys()] }, 'Cloudflare Access keys fetched');
    } catch (err) {
      deps.logger.warn(
        { url: deps.url, err: (err as Error).message },
        'Cloudflare Access keys could not be fetched; keeping the cached ones',
      );
    }
  }

  function refresh(): Promise<void> {
    inflight ??= fetchKeys().finally(() => {
      inflight = null;
    });
    return inflight;
  }

  return {
    async getKey(kid) {
      if (inflight) await inflight;
      const mayFetch = now() - attemptedAt >= minRefetchMs;
      const stale = now() - fetchedAt >= maxAgeMs;
      if ((!keys.has(kid) || stale) && mayFetch) await refresh();
      return keys.get(kid) ?? null;
    },
    fetches: () => count,
  };
}

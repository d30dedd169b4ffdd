import crypto from 'node:crypto';
import type { UserStore } from '../users/types';
import type { ApiTokenVerifier } from './chain';

/** Every personal API token starts with this, so it is recognisable in configs and secret scanners. */
export const API_TOKEN_PREFIX = 'cgw_';
/** How many characters of a token are kept in clear to tell tokens apart in lists. */
export const VISIBLE_PREFIX_CHARS = 12;

const TOKEN_SHAPE = /^cgw_[A-Za-z0-9_-]{43}$/;

/** SHA-256 of a token, hex: what the store keeps instead of the secret. */
export function sha256Hex(s: string): string {
  return crypto.createHash('sha256').update(s, 'utf8').digest('hex');
}

/** A new personal token: `cgw_` + 32 random bytes base64url, its visible prefix and its hash. */
export function generateApiToken(): { token: string; prefix: string; sha256: string } {
  const token = API_TOKEN_PREFIX + crypto.randomBytes(32).toString('base64url');
  return { token, prefix: token.slice(0, VISIBLE_PREFIX_CHARS), sha256: sha256Hex(token) };
}

/**
 * The chain's personal-token verifier: found by the SHA-256 of the presented value, refused (null, so the chain
 * answers 401) when expired or when its user is gone or disabled. Role and permissions come from the store.
 */
export function createApiTokenVerifier(store: UserStore, now: () => number = Date.now): ApiTokenVerifier {
  return (secret) => {
    if (!TOKEN_SHAPE.test(secret)) return null;
    const rec = store.tokens.findBySha256(sha256Hex(secret));
    if (!rec) return null;
    if (rec.expires_at !== null && Date.parse(rec.expires_at) <= now()) return null;
    const user = store.get(rec.username);
    if (!user || user.disabled || Date.parse(rec.created_at) < user.tokens_valid_after) return null;
    store.tokens.touch(rec.id);
    const exp = rec.expires_at === null ? undefined : Math.floor(Date.parse(rec.expires_at) / 1000);
    return { username: user.username, role: user.role, permissions: [...user.permissions], source: 'api-token', tokenId: rec.id, exp };
  };
}

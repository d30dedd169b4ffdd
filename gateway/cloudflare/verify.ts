import jwt from 'jsonwebtoken';
import { AppError } from '../errors';
import type { JwksCache } from './jwks';

/** The claims of a Cloudflare Access application token the gateway reads. */
export interface AccessClaims {
  aud: string | string[];
  iss: string;
  exp: number;
  nbf?: number;
  iat?: number;
  sub?: string;
  /** user tokens: the signed-in identity's email */
  email?: string;
  /** service tokens: the token's Client ID */
  common_name?: string;
  type?: string;
}

/** A refused assertion: 401, with the reason in details (never the token). */
export function refused(reason: string): AppError {
  return new AppError(401, 'INVALID_CREDENTIALS', 'Cloudflare Access assertion refused', { reason });
}

const MAX_TOKEN = 16 * 1024;
const B64URL = /^[A-Za-z0-9_-]+$/;

/**
 * Verifies a `Cf-Access-Jwt-Assertion`: RS256 only (the header's `alg` is checked before any key is chosen, and
 * jsonwebtoken is held to RS256 too, so `none` and HS256-signed-with-the-public-key are refused), key by `kid` from
 * the team's JWKS, `aud`, `iss`, `exp` (required) and `nbf` with a small clock tolerance.
 */
export async function verifyAccessJwt(
  token: string,
  opts: { jwks: JwksCache; audience: string | string[]; issuer: string; clockToleranceSec?: number },
): Promise<AccessClaims> {
  const t = token.trim();
  if (!t || t.length > MAX_TOKEN) throw refused('malformed');
  const parts = t.split('.');
  if (parts.length !== 3 || !parts.every((p) => B64URL.test(p))) throw refused('malformed');
  let header: { alg?: unknown; kid?: unknown };
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8')) as typeof header;
  } catch {
    throw refused('malformed');
  }
  if (!header || header.alg !== 'RS256') throw refused('algorithm not allowed');
  if (typeof header.kid !== 'string' || !header.kid || header.kid.length > 200) throw refused('no key id');
  const key = await opts.jwks.getKey(header.kid);
  if (!key) throw refused('unknown signing key');
  let claims: AccessClaims;
  try {
    claims = jwt.verify(t, key, {
      algorithms: ['RS256'],
      audience: opts.audience as string | [string, ...string[]],
      issuer: opts.issuer,
      clockTolerance: opts.clockToleranceSec ?? 30,
    }) as AccessClaims;
  } catch (e) {
    const name = (e as Error).name;
    const reason = name === 'TokenExpiredError' ? 'expired' : name === 'NotBeforeError' ? 'not yet valid' : (e as Error).message;
    throw refused(reason);
  }
  if (typeof claims !== 'object' || typeof claims.exp !== 'number') throw refused('no expiry');
  return claims;
}

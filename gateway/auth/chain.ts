import type { IncomingMessage } from 'node:http';
import { parse as parseCookie } from 'cookie';
import { AppError, errors } from '../errors';
import { matcherFor } from './apiKey';
import type { CredentialSource, Principal } from './principal';

/** Verifies a personal API token; null when the string is not one of ours. */
export type ApiTokenVerifier = (secret: string) => Principal | null;
/** Verifies a JWT; throws AppError 401 when invalid, expired or revoked. */
export type JwtVerifier = (token: string, source: CredentialSource) => Principal;
/** Verifies a Cloudflare Access assertion; throws AppError when invalid. */
export type CfAccessVerifier = (assertion: string) => Promise<Principal>;

/** What the chain needs; every verifier but the static key is optional. */
export interface CredentialChainDeps {
  apiKey: string | null;
  cookieName: string;
  verifyApiToken?: ApiTokenVerifier;
  verifyJwt?: JwtVerifier;
  verifyCfAccess?: CfAccessVerifier;
  /** a principal for credential-less direct-loopback requests, when allow_loopback_without_auth */
  loopbackPrincipal?: (req: IncomingMessage) => Principal | null;
  /** called with every present-but-invalid credential, for brute-force counting */
  onInvalid?: (req: IncomingMessage, kind: string) => void;
}

/** Query parameters that carry credentials; removed before proxying and redacted in logs. */
export const TOKEN_QUERY_PARAMS = ['api_key', 'token'];

/** A raw `name=value` query part's name as a query parser reads it (percent-decoded, `+` as space); null when malformed. */
export function queryParamName(part: string): string | null {
  const eq = part.indexOf('=');
  const name = eq < 0 ? part : part.slice(0, eq);
  try {
    return decodeURIComponent(name.replace(/\+/g, ' '));
  } catch {
    return null;
  }
}

const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** The static key as a principal: an admin named `api-key`. */
export const API_KEY_PRINCIPAL: Omit<Principal, 'source'> = { username: 'api-key', role: 'admin', permissions: [] };

/** The one credential chain (DESIGN §4): the first credential present decides; present-but-invalid is 401. */
export function createCredentialChain(deps: CredentialChainDeps) {
  const isApiKey = deps.apiKey ? matcherFor(deps.apiKey) : () => false;
  function keyOrToken(value: string, source: CredentialSource): Principal | null {
    if (isApiKey(value)) return { ...API_KEY_PRINCIPAL, source: source === 'query' ? 'query' : 'api-key' };
    const p = deps.verifyApiToken?.(value);
    return p ? { ...p, source: source === 'query' ? 'query' : 'api-token' } : null;
  }

  function invalid(req: IncomingMessage, kind: string, err?: unknown): never {
    deps.onInvalid?.(req, kind);
    if (err instanceof AppError) throw err;
    throw errors.invalidCredentials();
  }

  function jwtOrInvalid(req: IncomingMessage, value: string, source: CredentialSource): Principal {
    if (!deps.verifyJwt || !JWT_SHAPE.test(value)) invalid(req, source);
    try {
      return deps.verifyJwt(value, source);
    } catch (e) {
      // A signed-out session's token carries the gateway's own signature: not a guess. A script or tab still using
      // it must not lock its whole network out (it is told TOKEN_REVOKED and stays refused).
      invalid(req, e instanceof AppError && e.code === 'TOKEN_REVOKED' ? 'revoked' : source, e);
    }
  }

  return {
    /** Resolves the caller; null when no credential is present at all. Throws AppError(401) on a bad one. */
    async authenticate(req: IncomingMessage, query?: URLSearchParams): Promise<Principal | null> {
      const h = req.headers;
      // 1. X-API-Key / Bearer carrying the static key or a personal token; 2. Bearer JWT.
      const xKey = h['x-api-key'];
      if (xKey !== undefined) {
        const v = Array.isArray(xKey) ? xKey[0] : xKey;
        return keyOrToken(v.trim(), 'api-key') ?? invalid(req, 'api-key');
      }
      const auth = h.authorization;
      if (auth !== undefined) {
        const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
        if (!m) invalid(req, 'authorization');
        return keyOrToken(m[1], 'api-key') ?? jwtOrInvalid(req, m[1], 'jwt');
      }
      // 3. The session cookie.
      if (h.cookie) {
        let jar: Record<string, string | undefined> = {};
        try {
          jar = parseCookie(h.cookie);
        } catch {
          jar = {};
        }
        const c = jar[deps.cookieName];
        if (c) return jwtOrInvalid(req, c, 'cookie');
      }
      // 4. ?api_key= / ?token= for scripts that cannot set headers.
      if (query) {
        for (const name of TOKEN_QUERY_PARAMS) {
          // An empty `?token=` is no credential (links and forms leave them behind).
          const all = query.getAll(name).filter((v) => v !== '');
          if (!all.length) continue;
          if (all.length > 1) invalid(req, 'query');
          const v = all[0];
          return keyOrToken(v, 'query') ?? (JWT_SHAPE.test(v) ? jwtOrInvalid(req, v, 'query') : invalid(req, 'query'));
        }
      }
      // 5. Cloudflare Access.
      const cf = h['cf-access-jwt-assertion'];
      if (cf !== undefined && deps.verifyCfAccess) {
        try {
          return await deps.verifyCfAccess(Array.isArray(cf) ? cf[0] : cf);
        } catch (e) {
          invalid(req, 'cf-access', e);
        }
      }
      return deps.loopbackPrincipal?.(req) ?? null;
    },
  };
}

/** The credential chain's interface. */
export type CredentialChain = ReturnType<typeof createCredentialChain>;

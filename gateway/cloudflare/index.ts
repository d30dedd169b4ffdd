import crypto from 'node:crypto';
import path from 'node:path';
import type { Gate } from '../app';
import type { Audit } from '../audit';
import { API_KEY_PRINCIPAL } from '../auth/chain';
import type { Principal } from '../auth/principal';
import type { ResolvedConfig } from '../config/load';
import { AppError } from '../errors';
import type { Logger } from '../log';
import { emailKey } from '../users/rules';
import type { UserRecord, UserStore } from '../users/types';
import { migrateLegacyBindings } from './bindings';
import { createJwksCache, type JwksCache } from './jwks';
import { verifyAccessJwt, type AccessClaims } from './verify';

/** The header Cloudflare Access adds to every request it lets through. */
export const CF_ASSERTION_HEADER = 'cf-access-jwt-assertion';

const USERNAME_RE = /^[a-z0-9][a-z0-9_-]{1,31}$/;

/** The team domain as a bare host (`https://team.cloudflareaccess.com/` → `team.cloudflareaccess.com`). */
export function teamHost(teamDomain: string): string {
  return teamDomain
    .trim()
    .replace(/^https?:\/\//i, '')
    .replace(/\/.*$/, '')
    .toLowerCase();
}

/**
 * The username an email is provisioned as: its local part, lower-cased, `+tag` dropped, every character outside
 * [a-z0-9_-] turned into `-`, leading/trailing `-`/`_` trimmed, cut to 32. Too short or reserved → `cf-<hash8>`.
 */
export function usernameFromEmail(email: string): string {
  const local = email.split('@')[0].split('+')[0].toLowerCase();
  const name = local
    .replace(/[^a-z0-9_-]+/g, '-')
    .replace(/^[-_]+/, '')
    .slice(0, 32)
    .replace(/[-_]+$/, '');
  if (USERNAME_RE.test(name) && name !== 'api-key') return name;
  return `cf-${crypto.createHash('sha256').update(email).digest('hex').slice(0, 8)}`;
}

/** Cloudflare Access: the credential verifier for the chain, and the `required` gate. */
export interface CloudflareAccess {
  /** verifies an assertion and maps it to a principal (creating the user when `auto_provision`) */
  verify(assertion: string): Promise<Principal>;
  /** `required: true`: every request but /health must carry a valid assertion (403 CF_ACCESS_REQUIRED) */
  gate: Gate;
  jwks: JwksCache;
}

/**
 * Builds Cloudflare Access support (DESIGN §9). `iss` must be `https://<team_domain>`, `aud` the configured
 * audience, keys come from `certs_url` (default https://<team_domain>/cdn-cgi/access/certs; any URL, e.g. a local
 * http JWKS server in tests). Identity: a user token's `email` → the account holding exactly that email (set by an
 * admin, or stored on the account Access provisioned for it) — never an account found by the email's local part;
 * a service token's `common_name` → `service_tokens[common_name]` (a username, or `api-key` for the static-key admin).
 */
export function createCloudflareAccess(deps: {
  config: ResolvedConfig;
  users?: UserStore;
  logger: Logger;
  audit?: Audit;
  fetchImpl?: typeof fetch;
  jwksOptions?: { minRefetchMs?: number; maxAgeMs?: number };
}): CloudflareAccess {
  const cf = deps.config.cloudflare_access;
  if (!cf) throw new Error('createCloudflareAccess called without cloudflare_access configured');
  const { users, logger, audit } = deps;
  const host = teamHost(cf.team_domain);
  const issuer = `https://${host}`;
  const jwks = createJwksCache({
    url: cf.certs_url ?? `${issuer}/cdn-cgi/access/certs`,
    logger,
    fetchImpl: deps.fetchImpl,
    ...deps.jwksOptions,
  });
  // Bindings kept by earlier versions (email → name, made on first sight) carry over only where Access made the account.
  const migrated = users
    ? migrateLegacyBindings({ file: path.join(deps.config.paths.dataDir, 'cf_access_bindings.json'), users, logger })
    : Promise.resolve();
  const opts = { jwks, audience: cf.audience, issuer };

  // Verified assertions, briefly: the browser sends the same one with every asset request.
  const cache = new Map<string, { claims: AccessClaims; until: number }>();
  async function claimsOf(assertion: string): Promise<AccessClaims> {
    const hit = cache.get(assertion);
    if (hit && hit.until > Date.now()) return hit.claims;
    const claims = await verifyAccessJwt(assertion, opts);
    if (cache.size >= 2000) cache.clear();
    cache.set(assertion, { claims, until: Math.min(claims.exp * 1000, Date.now() + 60_000) });
    return claims;
  }

  const toPrincipal = (u: UserRecord, exp: number): Principal => {
    if (u.disabled) throw new AppError(403, 'FORBIDDEN', 'This account is disabled');
    return { username: u.username, role: u.role, permissions: [...u.permissions], source: 'cf-access', exp };
  };

  const provisioning = new Map<string, Promise<UserRecord>>();
  async function provision(email: string): Promise<UserRecord> {
    const store = users!;
    const base = usernameFromEmail(email);
    for (let i = 1; i < 100; i++) {
      const name = i === 1 ? base : `${base.slice(0, 32 - String(i).length - 1)}-${i}`;
      if (store.get(name)) continue;
      try {
        const rec = await store.create({ username: name, password_hash: '!', role: 'user', email });
        audit?.record({ event: 'cf_access_user_provisioned', user: rec.username, email, role: rec.role });
        return rec;
      } catch (e) {
        if ((e as AppError).code !== 'USER_EXISTS') throw e;
      }
    }
    throw new AppError(409, 'USER_EXISTS', 'No free username for this Cloudflare Access identity');
  }

  async function userForEmail(rawEmail: string): Promise<UserRecord> {
    // the stores' own email key, so an assertion's email compares exactly as an admin-set one is stored
    const email = emailKey(rawEmail) ?? '';
    if (!/^[^@\s]+@[^@\s]+$/.test(email) || email.length > 320)
      throw new AppError(401, 'INVALID_CREDENTIALS', 'Cloudflare Access assertion refused', { reason: 'bad email' });
    if (!users) throw new AppError(403, 'CF_ACCESS_UNKNOWN_USER', 'No gateway user store to map Cloudflare Access identities to');
    await migrated;
    // Exactly this email, stored on the account (compared lower-cased). Nothing else binds: a name that happens to
    // equal the email's local part is someone else's account.
    const holder = users.byEmail(email);
    if (holder) return holder;
    if (!cf!.auto_provision)
      throw new AppError(403, 'CF_ACCESS_UNKNOWN_USER', 'This Cloudflare Access identity has no gateway account', { email });
    let p = provisioning.get(email);
    if (!p) {
      p = provision(email).finally(() => provisioning.delete(email));
      provisioning.set(email, p);
    }
    return p;
  }

  async function verify(assertion: string): Promise<Principal> {
    const claims = await claimsOf(assertion);
    if (typeof claims.email === 'string' && claims.email) return toPrincipal(await userForEmail(claims.email), claims.exp);
    if (typeof claims.common_name === 'string' && claims.common_name) {
      const target = Object.prototype.hasOwnProperty.call(cf!.service_tokens, claims.common_name)
        ? cf!.service_tokens[claims.common_name]
        : undefined;
      if (!target)
        throw new AppError(403, 'CF_ACCESS_UNKNOWN_USER', 'This Cloudflare Access service token is not mapped to a gateway user', {
          common_name: claims.common_name,
        });
      if (target === 'api-key') return { ...API_KEY_PRINCIPAL, source: 'cf-access', exp: claims.exp };
      const u = users?.get(target);
      if (!u) {
        logger.warn(
          { common_name: claims.common_name, user: target },
          'cloudflare_access.service_tokens maps to a user that does not exist',
        );
        throw new AppError(403, 'CF_ACCESS_UNKNOWN_USER', 'This Cloudflare Access service token maps to no gateway user', {
          common_name: claims.common_name,
        });
      }
      return toPrincipal(u, claims.exp);
    }
    throw new AppError(401, 'INVALID_CREDENTIALS', 'Cloudflare Access assertion refused', { reason: 'no identity (email or common_name)' });
  }

  const gate: Gate = async (req, ctx) => {
    if (!cf!.required || (ctx.decision.rule.family ?? ctx.decision.rule.id) === 'health') return;
    const raw = req.headers[CF_ASSERTION_HEADER];
    const assertion = Array.isArray(raw) ? raw[0] : raw;
    if (!assertion)
      throw new AppError(403, 'CF_ACCESS_REQUIRED', 'This gateway is only reachable through Cloudflare Access', {
        reason: 'missing assertion',
      });
    try {
      await claimsOf(assertion);
    } catch (e) {
      const reason = (e as AppError).details?.reason ?? 'invalid';
      throw new AppError(403, 'CF_ACCESS_REQUIRED', 'This gateway is only reachable through Cloudflare Access', { reason });
    }
  };

  return { verify, gate, jwks };
}

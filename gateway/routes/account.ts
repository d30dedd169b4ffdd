import crypto from 'node:crypto';
import type express from 'express';
import type { RouteMount } from '../app';
import type { Audit } from '../audit';
import type { CredentialChain } from '../auth/chain';
import { cookieSecure, sessionCookie } from '../auth/cookie';
import { tokenRevoked, type JwtService } from '../auth/jwt';
import type { PasswordSlots } from '../auth/passwordSlots';
import type { Passwords } from '../auth/passwords';
import type { Principal } from '../auth/principal';
import { generateApiToken } from '../auth/tokens';
import type { ResolvedConfig } from '../config/load';
import { AppError, errors } from '../errors';
import { getContext } from '../http/context';
import { passwordProblem } from '../users/rules';
import type { ApiTokenRecord, UserRecord, UserStore } from '../users/types';
import type { AuthLimiter } from './auth';
import { bodyObject, freshPrincipal, onlyKeys, origin, parseBody } from './body';

/** What the signed-in user's own routes need. */
export interface AccountRouteDeps {
  config: ResolvedConfig;
  store: UserStore;
  passwords: Passwords;
  jwt: JwtService;
  audit: Audit;
  /** the credential chain, asked again once a body has arrived (routes/body.ts freshPrincipal) */
  chain: Pick<CredentialChain, 'authenticate'>;
  /** brute-force limiter: a stolen session must not guess the current password without limit */
  limiter?: AuthLimiter;
  /** caps on password checks in flight per client and overall (429 before hashing) */
  slots?: PasswordSlots;
}

/** Personal tokens one user may hold at once (each is a row in the users file). */
export const MAX_TOKENS_PER_USER = 100;
/** Shortest personal-token lifetime: anything shorter is expired by the time the caller can use it. */
export const MIN_TOKEN_LIFETIME_MS = 1000;

const publicToken = (t: ApiTokenRecord) => ({
  id: t.id,
  name: t.name,
  prefix: t.prefix,
  created_at: t.created_at,
  expires_at: t.expires_at,
  last_used_at: t.last_used_at,
});

/** GET /gateway/api/me, POST /gateway/api/me/password, GET|POST /gateway/api/tokens, DELETE /gateway/api/tokens/:id. */
export function accountRoutes(deps: AccountRouteDeps): RouteMount {
  const { config, store, passwords, jwt, audit, limiter } = deps;
  const fresh = freshPrincipal(deps.chain);

  const principalOf = (req: express.Request): Principal => {
    const p = getContext(req).principal;
    if (!p) throw errors.authRequired(); // the front door guarantees one; this keeps handlers honest
    return p;
  };
  /** The store user behind the principal; the static key and other non-users have no account to manage. */
  const accountOf = (req: express.Request, what: string): UserRecord => {
    const p = principalOf(req);
    const u = store.get(p.username);
    if (!u || p.source === 'api-key')
      throw new AppError(400, 'NOT_A_USER', `The ${p.username} identity is not a user account and has no ${what}`);
    return u;
  };

  return (app) => {
    app.get('/gateway/api/me', (req, res) => {
      const p = principalOf(req);
      res.set('Cache-Control', 'no-store').json({
        username: p.username,
        role: p.role,
        permissions: p.permissions,
        source: p.source,
        expires_at: p.exp ? new Date(p.exp * 1000).toISOString() : null,
      });
    });

    app.post('/gateway/api/me/password', ...parseBody, fresh, async (req, res) => {
      const body = bodyObject(req);
      onlyKeys(body, ['current_password', 'new_password']);
      const user = accountOf(req, 'password');
      if (typeof body.current_password !== 'string')
        throw errors.invalidBody('current_password is required', { fields: { current_password: 'required' } });
      const problem = passwordProblem(body.new_password);
      if (problem) throw errors.invalidBody('Invalid new password', { fields: { new_password: problem } });
      limiter?.check(req);
      const current_password = body.current_password;
      const verify = () => passwords.verify(current_password, user.password_hash, 'signed-in');
      const ok = await (deps.slots ? deps.slots.run(req, verify) : verify());
      if (!ok) {
        audit.record({ event: 'password_change_failure', user: user.username, ...origin(req) });
        limiter?.fail(req);
      }
      limiter?.check(req); // a parallel burst: see /login
      if (!ok) throw errors.invalidCredentials();
      const hash = await passwords.hash(body.new_password as string);
      // Changed (or the account disabled) while bcrypt ran: the password just verified is no longer the one to replace.
      const current = store.get(user.username);
      if (!current || current.disabled || current.password_hash !== user.password_hash) throw tokenRevoked();
      const updated = await store.update(user.username, { password_hash: hash });
      audit.record({ event: 'password_change', user: user.username, target: user.username, ...origin(req) });
      // Every earlier session (this one included) is now void; hand the caller a fresh one.
      const issued = jwt.issue(updated);
      const p = principalOf(req);
      if (p.source === 'cookie')
        res.append('Set-Cookie', sessionCookie(config, issued.token, issued.maxAgeSeconds, cookieSecure(req, config)));
      res.set('Cache-Control', 'no-store').json({ password_changed: true, token: issued.token, expires_at: issued.expires_at });
    });

    app.get('/gateway/api/tokens', (req, res) => {
      const user = accountOf(req, 'personal tokens');
      const tokens = store.tokens.list(user.username).map(publicToken);
      res.set('Cache-Control', 'no-store').json({ tokens });
    });

    app.post('/gateway/api/tokens', ...parseBody, fresh, async (req, res) => {
      const body = bodyObject(req);
      onlyKeys(body, ['name', 'expires_in_hours']);
      const user = accountOf(req, 'personal tokens');
      // A token minting tokens would let a short-lived or leaked one outlive its own expiry and revocation.
      if (principalOf(req).tokenId) throw errors.forbidden('A personal token cannot create personal tokens; sign in to create one');
      const max = config.max_access_token_expiration_hours;
      const fields: Record<string, string> = {};
      const name = typeof body.name === 'string' ? body.name.trim() : '';
      if (!name || name.length > 64 || /[\u0000-\u001f\u007f]/.test(name)) fields.name = 'required, 1 to 64 printable characters';
      let hours = max;
      if (body.expires_in_hours !== undefined) {
        const h =
          typeof body.expires_in_hours === 'string' && body.expires_in_hours.trim() !== ''
            ? Number(body.expires_in_hours)
            : body.expires_in_hours;
        if (typeof h !== 'number' || !Number.isFinite(h) || h <= 0 || h > max)
          fields.expires_in_hours = `a number of hours, more than 0 and at most ${max}`;
        else hours = h;
      }
      const lifetimeMs = Math.round(hours * 3600_000);
      // A lifetime that rounds below a second would make a token already expired (or expiring as it is handed out).
      if (!fields.expires_in_hours && lifetimeMs < MIN_TOKEN_LIFETIME_MS)
        fields.expires_in_hours = `the token would expire at once; at least ${MIN_TOKEN_LIFETIME_MS / 1000} s`;
      if (Object.keys(fields).length) throw errors.invalidBody('Invalid token request', { fields });
      if (store.tokens.list(user.username).length >= MAX_TOKENS_PER_USER)
        throw new AppError(409, 'TOO_MANY_TOKENS', `At most ${MAX_TOKENS_PER_USER} personal tokens per user; revoke some first`);
      const { token, prefix, sha256 } = generateApiToken();
      const created = Math.max(Date.now(), user.tokens_valid_after);
      const rec: ApiTokenRecord = {
        id: crypto.randomUUID(),
        username: user.username,
        name,
        prefix,
        sha256,
        created_at: new Date(created).toISOString(),
        expires_at: new Date(created + lifetimeMs).toISOString(),
        last_used_at: null,
      };
      await store.tokens.add(rec);
      audit.record({
        event: 'token_create',
        user: user.username,
        token_id: rec.id,
        token_name: name,
        prefix,
        expires_at: rec.expires_at,
        ...origin(req),
      });
      res
        .status(201)
        .set('Cache-Control', 'no-store')
        .json({ ...publicToken(rec), token });
    });

    app.delete('/gateway/api/tokens/:id', async (req, res) => {
      const user = accountOf(req, 'personal tokens');
      const id = String(req.params.id);
      if (!(await store.tokens.remove(user.username, id))) throw errors.notFound('No such token');
      audit.record({ event: 'token_revoke', user: user.username, token_id: id, ...origin(req) });
      res.status(204).end();
    });
  };
}

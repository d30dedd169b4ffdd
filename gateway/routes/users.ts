import type express from 'express';
import type { RouteMount } from '../app';
import type { Audit } from '../audit';
import type { CredentialChain } from '../auth/chain';
import type { Passwords } from '../auth/passwords';
import type { Role } from '../auth/principal';
import { errors } from '../errors';
import { getContext } from '../http/context';
import { passwordProblem, permissionsProblem, usernameProblem } from '../users/rules';
import type { UserRecord, UserStore } from '../users/types';
import { bodyObject, freshPrincipal, onlyKeys, origin, parseBody } from './body';

/** What the admin user-management API needs. */
export interface UserAdminDeps {
  store: UserStore;
  passwords: Passwords;
  audit: Audit;
  /** the credential chain, asked again once a body has arrived (routes/body.ts freshPrincipal) */
  chain: Pick<CredentialChain, 'authenticate'>;
}

/** A user as the admin API shows it: never the hash. */
export const publicUser = (u: UserRecord) => ({
  username: u.username,
  role: u.role,
  disabled: u.disabled,
  permissions: u.permissions,
  created_at: u.created_at,
});

const isRole = (v: unknown): v is Role => v === 'admin' || v === 'user';

/**
 * GET|POST /gateway/api/users, PATCH|DELETE /gateway/api/users/:username. Admin-only by the policy table;
 * LAST_ADMIN is enforced by the store so the CLI obeys it too.
 */
export function userAdminRoutes(deps: UserAdminDeps): RouteMount {
  const { store, passwords, audit } = deps;
  const fresh = freshPrincipal(deps.chain);
  const actor = (req: express.Request) => getContext(req).principal?.username ?? null;

  return (app) => {
    app.get('/gateway/api/users', (_req, res) => {
      // For the admin table: personal-token count, and the last sign-in the audit trail remembers (since start-up).
      const lastSignIn = new Map<string, string>();
      for (const e of audit.recent(5000)) if (e.event === 'login_success' && e.user && !lastSignIn.has(e.user)) lastSignIn.set(e.user, e.time);
      const users = store.list().map((u) => ({ ...publicUser(u), tokens: store.tokens.list(u.username).length, last_sign_in: lastSignIn.get(u.username) ?? null }));
      res.set('Cache-Control', 'no-store').json({ users });
    });

    app.post('/gateway/api/users', ...parseBody, fresh, async (req, res) => {
      const body = bodyObject(req);
      onlyKeys(body, ['username', 'password', 'role', 'permissions']);
      const fields: Record<string, string> = {};
      const u = usernameProblem(body.username);
      const p = passwordProblem(body.password);
      if (u) fields.username = u;
      if (p) fields.password = p;
      if (body.role !== undefined && !isRole(body.role)) fields.role = 'must be "admin" or "user"';
      const perm = body.permissions === undefined ? null : permissionsProblem(body.permissions);
      if (perm) fields.permissions = perm;
      if (Object.keys(fields).length) throw errors.invalidBody('Invalid user', { fields });
      const rec = await store.create({
        username: body.username as string,
        password_hash: await passwords.hash(body.password as string),
        role: isRole(body.role) ? body.role : 'user',
        permissions: [...new Set((body.permissions as string[] | undefined) ?? [])],
      });
      audit.record({ event: 'register', user: actor(req), new_user: rec.username, role: rec.role, via: 'admin-api', ...origin(req) });
      res.status(201).set('Cache-Control', 'no-store').json(publicUser(rec));
    });

    app.patch('/gateway/api/users/:username', ...parseBody, fresh, async (req, res) => {
      const body = bodyObject(req);
      onlyKeys(body, ['role', 'disabled', 'password', 'permissions']);
      const fields: Record<string, string> = {};
      if (body.role !== undefined && !isRole(body.role)) fields.role = 'must be "admin" or "user"';
      if (body.disabled !== undefined && typeof body.disabled !== 'boolean') fields.disabled = 'must be true or false';
      if (body.password !== undefined) {
        const p = passwordProblem(body.password);
        if (p) fields.password = p;
      }
      if (body.permissions !== undefined) {
        const p = permissionsProblem(body.permissions);
        if (p) fields.permissions = p;
      }
      if (Object.keys(body).length === 0) fields['(body)'] = 'nothing to change';
      if (Object.keys(fields).length) throw errors.invalidBody('Invalid change', { fields });
      const target = String(req.params.username);
      if (!store.get(target)) throw errors.notFound(`No user ${target}`);
      const patch: Partial<UserRecord> = {};
      if (isRole(body.role)) patch.role = body.role;
      if (typeof body.disabled === 'boolean') patch.disabled = body.disabled;
      if (body.permissions !== undefined) patch.permissions = [...new Set(body.permissions as string[])];
      if (typeof body.password === 'string') patch.password_hash = await passwords.hash(body.password);
      const rec = await store.update(target, patch);
      const changes = Object.keys(body).sort();
      audit.record({ event: 'user_update', user: actor(req), target, changes, ...origin(req) });
      if (patch.password_hash) audit.record({ event: 'password_change', user: actor(req), target, ...origin(req) });
      res.set('Cache-Control', 'no-store').json(publicUser(rec));
    });

    app.delete('/gateway/api/users/:username', async (req, res) => {
      const target = String(req.params.username);
      await store.remove(target);
      audit.record({ event: 'user_delete', user: actor(req), target, ...origin(req) });
      res.status(204).end();
    });
  };
}

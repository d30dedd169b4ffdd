import type express from 'express';
import type { RouteMount } from '../app';
import type { Audit } from '../audit';
import type { CredentialChain } from '../auth/chain';
import type { Passwords } from '../auth/passwords';
import type { Role } from '../auth/principal';
import { AppError, errors } from '../errors';
import { getContext } from '../http/context';
import { emailProblem, passwordProblem, permissionsProblem, usernameProblem } from '../users/rules';
import type { FilesOnDelete, UserFolders } from '../proxy/isolation/folders';
import type { UserRecord, UserStore } from '../users/types';
import { bodyObject, freshPrincipal, onlyKeys, origin, parseBody } from './body';

/** What the admin user-management API needs. */
export interface UserAdminDeps {
  store: UserStore;
  passwords: Passwords;
  audit: Audit;
  /** the credential chain, asked again once a body has arrived (routes/body.ts freshPrincipal) */
  chain: Pick<CredentialChain, 'authenticate'>;
  /** a deleted account's input/output folders (`?files=keep|delete`) */
  folders?: Pick<UserFolders, 'check' | 'plan'>;
}

/** A user as the admin API shows it: never the hash. */
export const publicUser = (u: UserRecord) => ({
  id: u.id,
  username: u.username,
  email: u.email ?? null,
  role: u.role,
  disabled: u.disabled,
  permissions: u.permissions,
  created_at: u.created_at,
});

const isRole = (v: unknown): v is Role => v === 'admin' || v === 'user';
const emailTaken = () => new AppError(409, 'EMAIL_EXISTS', 'Another account already has that email');

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
      for (const e of audit.recent(5000))
        if (e.event === 'login_success' && e.user && !lastSignIn.has(e.user)) lastSignIn.set(e.user, e.time);
      const users = store
        .list()
        .map((u) => ({ ...publicUser(u), tokens: store.tokens.list(u.username).length, last_sign_in: lastSignIn.get(u.username) ?? null }));
      res.set('Cache-Control', 'no-store').json({ users });
    });

    app.post('/gateway/api/users', ...parseBody, fresh, async (req, res) => {
      const body = bodyObject(req);
      onlyKeys(body, ['username', 'password', 'role', 'permissions', 'email']);
      const fields: Record<string, string> = {};
      const u = usernameProblem(body.username);
      const p = passwordProblem(body.password);
      if (u) fields.username = u;
      if (p) fields.password = p;
      if (body.role !== undefined && !isRole(body.role)) fields.role = 'must be "admin" or "user"';
      const perm = body.permissions === undefined ? null : permissionsProblem(body.permissions);
      if (perm) fields.permissions = perm;
      const mail = body.email === undefined || body.email === null ? null : emailProblem(body.email);
      if (mail) fields.email = mail;
      if (Object.keys(fields).length) throw errors.invalidBody('Invalid user', { fields });
      // Checked before the (slow) hash; the store checks again when it writes.
      if (typeof body.email === 'string' && store.byEmail(body.email)) throw emailTaken();
      const rec = await store.create({
        username: body.username as string,
        password_hash: await passwords.hash(body.password as string),
        role: isRole(body.role) ? body.role : 'user',
        permissions: [...new Set((body.permissions as string[] | undefined) ?? [])],
        email: typeof body.email === 'string' ? body.email : null,
      });
      audit.record({ event: 'register', user: actor(req), new_user: rec.username, role: rec.role, via: 'admin-api', ...origin(req) });
      res.status(201).set('Cache-Control', 'no-store').json(publicUser(rec));
    });

    app.patch('/gateway/api/users/:username', ...parseBody, fresh, async (req, res) => {
      const body = bodyObject(req);
      onlyKeys(body, ['role', 'disabled', 'password', 'permissions', 'email']);
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
      // null or '' clears the email
      if (body.email !== undefined && body.email !== null && body.email !== '') {
        const mail = emailProblem(body.email);
        if (mail) fields.email = mail;
      }
      if (Object.keys(body).length === 0) fields['(body)'] = 'nothing to change';
      if (Object.keys(fields).length) throw errors.invalidBody('Invalid change', { fields });
      const target = String(req.params.username);
      if (!store.get(target)) throw errors.notFound(`No user ${target}`);
      const holder = typeof body.email === 'string' && body.email ? store.byEmail(body.email) : undefined;
      if (holder && holder.username !== target) throw emailTaken();
      const patch: Partial<UserRecord> = {};
      if (isRole(body.role)) patch.role = body.role;
      if (typeof body.disabled === 'boolean') patch.disabled = body.disabled;
      if (body.permissions !== undefined) patch.permissions = [...new Set(body.permissions as string[])];
      if (body.email !== undefined) patch.email = typeof body.email === 'string' && body.email ? body.email : null;
      if (typeof body.password === 'string') patch.password_hash = await passwords.hash(body.password);
      const rec = await store.update(target, patch);
      const changes = Object.keys(body).sort();
      audit.record({ event: 'user_update', user: actor(req), target, changes, ...origin(req) });
      if (patch.password_hash) audit.record({ event: 'password_change', user: actor(req), target, ...origin(req) });
      res.set('Cache-Control', 'no-store').json(publicUser(rec));
    });

    app.delete('/gateway/api/users/:username', async (req, res) => {
      const target = String(req.params.username);
      const q = getContext(req).query;
      const files = q.getAll('files');
      if (files.length > 1 || (files.length === 1 && files[0] !== 'keep' && files[0] !== 'delete'))
        throw errors.invalidBody('files must be "keep" (default: readable by admins only) or "delete"', {
          fields: { files: 'keep or delete' },
        });
      const mode: FilesOnDelete = files[0] === 'delete' ? 'delete' : 'keep';
      if (!store.get(target)) throw errors.notFound(`No user ${target}`);
      await deps.folders?.check(mode);
      deps.folders?.plan(target, mode);
      try {
        await store.remove(target);
      } catch (e) {
        deps.folders?.plan(target, 'keep');
        throw e;
      }
      audit.record({ event: 'user_delete', user: actor(req), target, files: mode, ...origin(req) });
      res.status(204).end();
    });
  };
}

import fs from 'node:fs';
import type { IncomingMessage } from 'node:http';
import path from 'node:path';
import type express from 'express';
import type { RouteMount } from '../app';
import type { Audit } from '../audit';
import type { CredentialChain } from '../auth/chain';
import { clearedCookie, cookieSecure, sessionCookie } from '../auth/cookie';
import type { JwtService } from '../auth/jwt';
import type { PasswordSlots } from '../auth/passwordSlots';
import type { Passwords } from '../auth/passwords';
import type { ResolvedConfig } from '../config/load';
import { AppError, errors } from '../errors';
import { getContext } from '../http/context';
import { escapeHtml, wantsHtml } from '../http/render';
import type { Logger } from '../log';
import type { Upstream } from '../proxy/upstream';
import { passwordProblem, usernameProblem } from '../users/rules';
import type { Setup } from '../users/setup';
import type { UserRecord, UserStore } from '../users/types';
import { bodyObject, freshPrincipal, isBrowserForm, origin, parseBody, safeNext } from './body';
import { PUBLIC_DIR } from './static';

/** Brute-force hooks for /login and /register (issue 4): `check` throws 429 when the caller must wait. */
export interface AuthLimiter {
  check(req: IncomingMessage, username?: string): void;
  fail(req: IncomingMessage, username?: string): void;
  succeed(req: IncomingMessage, username?: string): void;
}

/** What the sign-in, sign-out and registration routes need. */
export interface AuthRouteDeps {
  config: ResolvedConfig;
  store: UserStore;
  passwords: Passwords;
  jwt: JwtService;
  setup: Setup;
  audit: Audit;
  logger?: Logger;
  upstream?: Upstream;
  limiter?: AuthLimiter;
  /** the request comes from this machine itself (net/loopback.ts createIsLocal): first-run registration needs no code */
  isLocal: (req: IncomingMessage) => boolean;
  /** the credential chain, asked again once a body has arrived (routes/body.ts freshPrincipal) */
  chain: Pick<CredentialChain, 'authenticate'>;
  /** caps on password checks in flight per client and overall (429 before hashing) */
  slots?: PasswordSlots;
}

/** The CSP for the gateway's pages: scripts and styles only from /gateway/static, no framing. */
export const PAGE_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/** Sends public/<name> (written by the pages work), or a minimal script-free form until it exists. */
function sendPage(res: express.Response, name: string, placeholder: () => string): void {
  res.set({
    'Content-Security-Policy': PAGE_CSP,
    'X-Frame-Options': 'DENY',
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
  });
  const file = path.join(PUBLIC_DIR, name);
  if (fs.existsSync(file)) return void res.sendFile(file);
  res.type('html').send(placeholder());
}

const page = (title: string, inner: string) =>
  `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${title}</title><link rel="stylesheet" href="/gateway/static/gateway.css"></head><body><main class="card"><h1>${title}</h1>${inner}</main></body></html>`;

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** POST/GET /login, GET|POST /logout, GET/POST /register. */
export function authRoutes(deps: AuthRouteDeps): RouteMount {
  const { config, store, passwords, jwt, setup, audit, limiter } = deps;
  const fresh = freshPrincipal(deps.chain);

  /** Checks a username and password; the same work and the same answer for unknown, wrong and disabled. */
  async function checkCredentials(req: IncomingMessage, username: string, password: string): Promise<UserRecord | null> {
    const user = store.get(username);
    const verify = () => passwords.verify(password, user?.password_hash);
    const ok = await (deps.slots ? deps.slots.run(req, verify) : verify());
    // Judged on the account as it is now: its password may have changed, or it been disabled, while bcrypt ran.
    const current = store.get(username);
    return ok && user && current && !current.disabled && current.password_hash === user.password_hash ? current : null;
  }

  return (app) => {
    app.get('/login', (req, res) => {
      sendPage(res, 'login.html', () => {
        const next = escapeHtml(safeNext(getContext(req).query.get('next')));
        const failed = getContext(req).query.has('error') ? '<p class="error">Wrong username or password.</p>' : '';
        return page(
          'Sign in',
          `${failed}<form method="post" action="/login"><input type="hidden" name="next" value="${next}">` +
            '<label>Username <input name="username" autocomplete="username" required></label>' +
            '<label>Password <input name="password" type="password" autocomplete="current-password" required></label>' +
            '<button type="submit">Sign in</button></form>',
        );
      });
    });

    app.post('/login', ...parseBody, async (req, res) => {
      const body = bodyObject(req);
      const username = str(body.username);
      const password = str(body.password);
      const form = isBrowserForm(req);
      if (!username || !password)
        throw errors.invalidBody('username and password are required', {
          fields: { ...(!username && { username: 'required' }), ...(!password && { password: 'required' }) },
        });
      const name = username.trim().toLowerCase().slice(0, 64);
      limiter?.check(req, name);
      const user = await checkCredentials(req, name, password);
      if (!user) {
        audit.record({ event: 'login_failure', user: null, username: name, ...origin(req) });
        limiter?.fail(req, name);
      }
      // A parallel burst passed the check above together, before any of it failed: once the guesses that finished
      // first have locked the caller out, no later one is answered — right or wrong.
      limiter?.check(req, name);
      if (!user) {
        if (form) return void res.redirect(303, `/login?error=invalid&next=${encodeURIComponent(safeNext(body.next))}`);
        throw errors.invalidCredentials();
      }
      const issued = jwt.issue(user);
      res.set('Cache-Control', 'no-store');
      res.append('Set-Cookie', sessionCookie(config, issued.token, issued.maxAgeSeconds, cookieSecure(req, config)));
      audit.record({ event: 'login_success', user: user.username, ...origin(req) });
      limiter?.succeed(req, name);
      if (form) return void res.redirect(303, safeNext(body.next));
      res.json({ token: issued.token, expires_at: issued.expires_at, user: { username: user.username, role: user.role } });
    });

    const logout = async (req: express.Request, res: express.Response) => {
      const p = getContext(req).principal;
      if (p?.jti && p.exp) await store.revocations.revoke(p.jti, p.exp);
      res.set('Cache-Control', 'no-store');
      res.append('Set-Cookie', clearedCookie(config, cookieSecure(req, config)));
      if (p) audit.record({ event: 'logout', user: p.username, source: p.source, ...origin(req) });
      if (p && config.free_memory_on_logout && deps.upstream) {
        deps.upstream
          .request('POST', '/free', {
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ unload_models: true, free_memory: true }),
          })
          .catch((err) => deps.logger?.warn({ err: (err as Error).message }, 'free_memory_on_logout: upstream /free failed'));
      }
      if (wantsHtml(req) || isBrowserForm(req)) return void res.redirect(req.method === 'GET' ? 302 : 303, '/login?signed_out=1');
      res.json({ logged_out: true });
    };
    app.get('/logout', logout);
    app.post('/logout', ...parseBody, logout);

    app.get('/register', (_req, res) => {
      sendPage(res, 'register.html', () =>
        page(
          setup.pending() ? 'Create the first administrator' : 'Register a user',
          '<form method="post" action="/register">' +
            (setup.pending()
              ? '<label>Setup code <input name="setup_code" autocomplete="off"></label>'
              : '<label>Admin username <input name="username" autocomplete="username"></label>' +
                '<label>Admin password <input name="password" type="password" autocomplete="current-password"></label>') +
            '<label>New username <input name="new_user_username" autocomplete="off" required></label>' +
            '<label>New password <input name="new_user_password" type="password" autocomplete="new-password" required></label>' +
            '<button type="submit">Register</button></form>',
        ),
      );
    });

    app.post('/register', ...parseBody, fresh, async (req, res) => {
      const body = bodyObject(req);
      const fields: Record<string, string> = {};
      const uProblem = usernameProblem(body.new_user_username);
      const pProblem = passwordProblem(body.new_user_password);
      if (uProblem) fields.new_user_username = uProblem;
      if (pProblem) fields.new_user_password = pProblem;
      if (body.role !== undefined && body.role !== 'admin' && body.role !== 'user') fields.role = 'must be "admin" or "user"';
      if (Object.keys(fields).length) throw errors.invalidBody('Invalid registration', { fields });
      const newName = body.new_user_username as string;
      const adminName = str(body.username)?.trim().toLowerCase();
      limiter?.check(req, adminName);

      // Who is allowed: the setup code holder or this machine while there is no admin; afterwards an admin.
      const ctx = getContext(req);
      const firstRun = setup.pending();
      let actor: string | null = null;
      let via: string;
      const deny = (e: AppError): never => {
        limiter?.fail(req, adminName);
        audit.record({
          event: 'register_denied',
          user: adminName ?? ctx.principal?.username ?? null,
          new_user: newName,
          reason: e.code,
          ...origin(req),
        });
        limiter?.check(req, adminName); // a parallel burst: see /login
        throw e;
      };
      const given = (v: unknown) => v !== undefined && v !== '';
      if (given(body.username) || given(body.password)) {
        const admin = adminName && typeof body.password === 'string' ? await checkCredentials(req, adminName, body.password) : null;
        if (!admin) deny(errors.invalidCredentials());
        else {
          limiter?.check(req, adminName); // a parallel burst: see /login
          if (admin.role !== 'admin') deny(errors.forbidden('Only an administrator can register users'));
          else {
            actor = admin.username;
            via = 'admin-credentials';
          }
        }
      } else if (firstRun && given(body.setup_code)) {
        if (!setup.check(body.setup_code))
          deny(new AppError(401, 'INVALID_CREDENTIALS', 'The setup code is wrong', { setup_required: true }));
        via = 'setup-code';
      } else if (ctx.principal) {
        if (ctx.principal.role !== 'admin') deny(errors.forbidden('Only an administrator can register users'));
        actor = ctx.principal.username;
        via = `admin-${ctx.principal.source}`;
      } else if (firstRun && deps.isLocal(req)) {
        via = 'loopback';
      } else {
        deny(
          firstRun
            ? new AppError(401, 'AUTH_REQUIRED', 'Enter the setup code printed by the gateway to create the first administrator', {
                setup_required: true,
              })
            : new AppError(401, 'AUTH_REQUIRED', 'Administrator credentials are required to register users'),
        );
      }

      const hash = await passwords.hash(body.new_user_password as string);
      // Re-decided after the await: the setup path dies the moment any admin exists, even a concurrent one.
      const stillFirst = setup.pending();
      if (!actor && !stillFirst) deny(errors.forbidden('Setup is already complete; sign in as an administrator to register users'));
      const role = stillFirst ? 'admin' : body.role === 'admin' ? 'admin' : 'user';
      const rec = await store.create({ username: newName, password_hash: hash, role });
      audit.record({ event: 'register', user: actor ?? rec.username, new_user: rec.username, role: rec.role, via: via!, ...origin(req) });
      limiter?.succeed(req, adminName);
      if (isBrowserForm(req)) return void res.redirect(303, actor ? '/register' : '/login');
      res.status(201).set('Cache-Control', 'no-store').json({ username: rec.username, role: rec.role });
    });
  };
}

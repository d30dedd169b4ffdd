import type { IncomingMessage } from 'node:http';
import express from 'express';
import type { CredentialChain } from '../auth/chain';
import type { Principal } from '../auth/principal';
import { AppError, errors } from '../errors';
import { getContext } from '../http/context';

/** Body parsers for the gateway's auth and account routes: JSON or a plain HTML form, 64 kB at most. */
export const parseBody = [express.json({ limit: '64kb' }), express.urlencoded({ extended: false, limit: '64kb' })];

/**
 * Runs after a body parser: the credential chain decides again now that the body is in. The front door admitted the
 * request when its headers arrived, and a client may hold its body back for as long as it likes — long enough to
 * outwait a logout, password change, disabling or demotion and then act (mint a token, create an admin) anyway.
 */
export function freshPrincipal(chain: Pick<CredentialChain, 'authenticate'>): express.RequestHandler {
  return async (req, _res, next) => {
    const ctx = getContext(req);
    const before = ctx.principal;
    if (!before) return next();
    const isPublic = ctx.decision.access === 'public';
    let now: Principal | null;
    try {
      now = await chain.authenticate(req, ctx.query);
    } catch (e) {
      // Public routes treat a bad credential as none, as the front door does; the others refuse.
      if (!isPublic || !(e instanceof AppError) || e.status !== 401) throw e;
      now = null;
    }
    if (isPublic) {
      ctx.principal = now;
      return next();
    }
    if (!now || now.username !== before.username) throw errors.authRequired();
    if (ctx.decision.access === 'admin' && now.role !== 'admin') throw errors.forbidden('This route is for administrators');
    before.role = now.role;
    before.permissions = now.permissions;
    next();
  };
}

/** The parsed body as a plain object (an absent body is empty); anything else is 400 INVALID_BODY. */
export function bodyObject(req: express.Request): Record<string, unknown> {
  const b: unknown = req.body;
  if (b === undefined || b === null) return {};
  if (typeof b !== 'object' || Array.isArray(b)) throw errors.invalidBody('The body must be a JSON object');
  return b as Record<string, unknown>;
}

/** Refuses keys a route does not know (typos must not be silently ignored on security settings). */
export function onlyKeys(body: Record<string, unknown>, allowed: string[]): void {
  const extra = Object.keys(body).filter((k) => !allowed.includes(k));
  if (extra.length) throw errors.invalidBody(`Unknown field(s): ${extra.join(', ')}`, { unknown: extra, allowed });
}

/** Where an auth event came from, for the audit trail. */
export function origin(req: IncomingMessage): { ip: string; user_agent: string } {
  const ua = req.headers['user-agent'];
  return { ip: getContext(req).clientIp, user_agent: (Array.isArray(ua) ? ua[0] : (ua ?? '')).slice(0, 256) };
}

/** True for an HTML form post from a browser (no script): it gets redirects instead of JSON. */
export function isBrowserForm(req: IncomingMessage): boolean {
  return (
    /^application\/x-www-form-urlencoded\b/i.test(req.headers['content-type'] ?? '') && /\btext\/html\b/i.test(req.headers.accept ?? '')
  );
}

/** A same-site path to go to after sign-in (never another host, never `//x` or `/\x`). */
export function safeNext(v: unknown): string {
  if (typeof v !== 'string' || !v.startsWith('/') || v.startsWith('//') || v.startsWith('/\\') || /[\u0000-\u001f]/.test(v)) return '/';
  return v;
}

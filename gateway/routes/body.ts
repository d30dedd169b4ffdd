import type { IncomingMessage } from 'node:http';
import express from 'express';
import { errors } from '../errors';
import { getContext } from '../http/context';

/** Body parsers for the gateway's auth and account routes: JSON or a plain HTML form, 64 kB at most. */
export const parseBody = [express.json({ limit: '64kb' }), express.urlencoded({ extended: false, limit: '64kb' })];

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
  return { ip: getContext(req).clientIp, user_agent: (Array.isArray(ua) ? ua[0] : ua ?? '').slice(0, 256) };
}

/** True for an HTML form post from a browser (no script): it gets redirects instead of JSON. */
export function isBrowserForm(req: IncomingMessage): boolean {
  return /^application\/x-www-form-urlencoded\b/i.test(req.headers['content-type'] ?? '') && /\btext\/html\b/i.test(req.headers.accept ?? '');
}

/** A same-site path to go to after sign-in (never another host, never `//x` or `/\x`). */
export function safeNext(v: unknown): string {
  if (typeof v !== 'string' || !v.startsWith('/') || v.startsWith('//') || v.startsWith('/\\') || /[\u0000-\u001f]/.test(v)) return '/';
  return v;
}

import type { IncomingMessage } from 'node:http';
import { serialize } from 'cookie';
import type { ResolvedConfig } from '../config/load';
import { getContext } from '../http/context';

type CookieConfig = Pick<ResolvedConfig, 'cookie' | 'force_https'>;

/** Whether the session cookie must be `Secure`: the request came over TLS (or a trusted proxy says so), or force_https. */
export function cookieSecure(req: IncomingMessage, config: CookieConfig): boolean {
  return getContext(req).secure || config.force_https;
}

/** The Set-Cookie value carrying a session JWT: HttpOnly, SameSite from config, Path=/, Max-Age = its lifetime. */
export function sessionCookie(config: CookieConfig, token: string, maxAgeSeconds: number, secure: boolean): string {
  return serialize(config.cookie.name, token, {
    httpOnly: true,
    sameSite: config.cookie.same_site,
    path: '/',
    maxAge: Math.max(0, Math.floor(maxAgeSeconds)),
    secure,
  });
}

/** The Set-Cookie value that removes the session cookie (same attributes, so browsers match it). */
export function clearedCookie(config: CookieConfig, secure: boolean): string {
  return serialize(config.cookie.name, '', {
    httpOnly: true,
    sameSite: config.cookie.same_site,
    path: '/',
    maxAge: 0,
    expires: new Date(0),
    secure,
  });
}

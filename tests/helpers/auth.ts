import request from 'supertest';
import type { TestGateway } from './gateway';

/** Default password used by the auth tests' users. */
export const PW = 'correct-horse-1';

/** Registers the first administrator from this (loopback) machine, no setup code needed. */
export async function registerFirstAdmin(gw: { url: string }, username = 'admin', password = PW): Promise<void> {
  const res = await request(gw.url).post('/register').send({ new_user_username: username, new_user_password: password });
  if (res.status !== 201) throw new Error(`first admin: ${res.status} ${JSON.stringify(res.body)}`);
}

/** Registers a user with the admin's credentials in the body (Sentinel's way). */
export async function registerUser(gw: { url: string }, username: string, opts: { password?: string; admin?: [string, string]; role?: string } = {}) {
  const [au, ap] = opts.admin ?? ['admin', PW];
  const res = await request(gw.url)
    .post('/register')
    .send({ new_user_username: username, new_user_password: opts.password ?? PW, username: au, password: ap, ...(opts.role ? { role: opts.role } : {}) });
  if (res.status !== 201) throw new Error(`register ${username}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body as { username: string; role: string };
}

/** Signs in; returns the JWT, the raw Set-Cookie line and a `Cookie:` header value. */
export async function login(gw: { url: string }, username: string, password = PW) {
  const res = await request(gw.url).post('/login').send({ username, password });
  if (res.status !== 200) throw new Error(`login ${username}: ${res.status} ${JSON.stringify(res.body)}`);
  const setCookie = ([] as string[]).concat(res.headers['set-cookie'] ?? []);
  const line = setCookie.find((c) => c.startsWith('jwt_token=')) ?? '';
  return { token: res.body.token as string, setCookie: line, cookie: line.split(';')[0], body: res.body };
}

/** Every string in the gateway's log file, joined, to search for leaked secrets. */
export function logText(logs: Record<string, unknown>[]): string {
  return logs.map((l) => JSON.stringify(l)).join('\n');
}

/** The gateway's own origin, for same-origin requests. */
export const ownOrigin = (gw: TestGateway) => gw.url;

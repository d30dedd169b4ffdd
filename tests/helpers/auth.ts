import request from 'supertest';
import { hit } from './edge';
import type { TestGateway } from './gateway';

/** Default password used by the auth tests' users. */
export const PW = 'correct-horse-1';

/** Loopback address the first admin registers from: not 127.0.0.1, which TRUST_LOCAL_PROXY makes a proxy (not "this machine"). */
const OWNER_ADDRESS = '127.0.0.254';

/** Registers the first administrator from this (loopback) machine, no setup code needed. */
export async function registerFirstAdmin(gw: { url: string }, username = 'admin', password = PW): Promise<void> {
  const res = await hit(gw.url, '/register', {
    method: 'POST',
    from: OWNER_ADDRESS,
    body: { new_user_username: username, new_user_password: password },
  });
  if (res.status !== 201) throw new Error(`first admin: ${res.status} ${res.text}`);
}

/** Registers a user with the admin's credentials in the body (Sentinel's way). */
export async function registerUser(
  gw: { url: string },
  username: string,
  opts: { password?: string; admin?: [string, string]; role?: string } = {},
) {
  const [au, ap] = opts.admin ?? ['admin', PW];
  const res = await request(gw.url)
    .post('/register')
    .send({
      new_user_username: username,
      new_user_password: opts.password ?? PW,
      username: au,
      password: ap,
      ...(opts.role ? { role: opts.role } : {}),
    });
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

/**
 * Config that makes the test client (127.0.0.1) a trusted proxy, so a request can state its client address in
 * X-Forwarded-For. Tests that fail on purpose many times use it with `fromFreshIps`, so the brute-force limiter
 * (which counts per client IP) stays fully on without locking the whole test file out.
 */
export const TRUST_LOCAL_PROXY = { trusted_proxies: ['127.0.0.1'] };

let ipCounter = 0;
/** A client address never used before in this process (198.18.0.0/15 is reserved for benchmarking). */
export const freshIp = () => {
  const n = ipCounter++;
  return `198.18.${(n >> 8) & 255}.${n & 255}`;
};

/** supertest for `url` where every request claims a fresh client IP (needs TRUST_LOCAL_PROXY on the gateway). */
export function fromFreshIps(url: string): ReturnType<typeof request> {
  const base = request(url);
  return new Proxy(base, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        const t = (v as (...a: unknown[]) => request.Test).apply(target, args);
        return t && typeof t.set === 'function' ? t.set('X-Forwarded-For', freshIp()) : t;
      };
    },
  });
}

/** The first admin (`admin`, from a loopback address) plus one user, both signed in. */
export async function adminAndUser(
  gw: { url: string },
  username: string,
): Promise<{ admin: Awaited<ReturnType<typeof login>>; user: Awaited<ReturnType<typeof login>> }> {
  await registerFirstAdmin(gw);
  await registerUser(gw, username);
  return { user: await login(gw, username), admin: await login(gw, 'admin') };
}

/**
 * Outside checks for issues 2–4 against the BUILT gateway (dist/gateway/main.js run as its own process, the way a
 * self-hoster runs it) in front of the fake ComfyUI: the cases the feature suites do not try — odd credential
 * spellings, the users CLI next to a busy gateway, kill -9 and SIGTERM of the real process, lists edited on disk
 * over IPv6, TLS with a real certificate, Cloudflare Access audiences given as arrays.
 */
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import WebSocket from 'ws';
import { PW } from './helpers/auth';
import { MAIN_JS, spawnGateway, type ChildGateway } from './helpers/child';
import { hit, reached, upgradeStatus, waitFor, type Hit } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { TEST_KEY } from './helpers/gateway';
import { multipartUpload } from './helpers/multipart';
import { clientTraffic } from './helpers/traffic';
import { openSocket } from './helpers/ws';

const KEY = { 'x-api-key': TEST_KEY };
/** The loopback address the owner registers the first admin from (127.0.0.1 is left to the tests' own traffic). */
const OWNER = '127.0.0.254';
const CLI_JS = path.join(path.dirname(MAIN_JS), 'users', 'cli.js');

/** A gateway process of its own with a fresh directory holding config.json (its data dir is `<dir>/data`). */
interface Child {
  g: ChildGateway;
  dir: string;
  dataDir: string;
}

const children: Child[] = [];
async function child(config: Record<string, unknown>, opts: { env?: NodeJS.ProcessEnv; dir?: string } = {}): Promise<Child> {
  const dir = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-accept-'));
  if (!opts.dir)
    fs.writeFileSync(
      path.join(dir, 'config.json'),
      JSON.stringify({ host: '127.0.0.1', port: 0, bcrypt_cost: 4, log_levels: ['debug'], ...config }),
    );
  const g = await spawnGateway(['--config', path.join(dir, 'config.json')], opts.env);
  const c = { g, dir, dataDir: path.join(dir, 'data') };
  children.push(c);
  return c;
}
afterAll(async () => {
  for (const c of children) {
    c.g.kill('SIGKILL');
    await c.g.exited;
    fs.rmSync(c.dir, { recursive: true, force: true });
  }
});

let lastOctet = 0;
/** A loopback address never used before in this file: each failing probe gets its own, so lockouts stay apart. */
const freshLoopback = () => `127.0.9.${++lastOctet}`;

const error = (r: Hit) => r.body?.error?.code as string | undefined;
const sessionCookie = (r: Hit) => ([] as string[]).concat(r.headers['set-cookie'] ?? []).find((c) => c.startsWith('jwt_token=')) ?? '';
const isSecureCookie = (line: string) => /;\s*Secure(;|$)/i.test(line);

async function firstAdmin(url: string): Promise<void> {
  const r = await hit(url, '/register', { method: 'POST', from: OWNER, body: { new_user_username: 'admin', new_user_password: PW } });
  expect(r.status).toBe(201);
}
async function addUser(url: string, username: string, password = PW): Promise<void> {
  const r = await hit(url, '/register', {
    method: 'POST',
    body: { new_user_username: username, new_user_password: password, username: 'admin', password: PW },
  });
  expect([username, r.status]).toEqual([username, 201]);
}
/** Every secret the tests handed out or used, to look for in the logs. */
const secrets = new Set<string>([TEST_KEY, PW]);

async function signIn(
  url: string,
  username: string,
  password = PW,
  from?: string,
): Promise<{ token: string; cookie: string; setCookie: string }> {
  const r = await hit(url, '/login', { method: 'POST', from, body: { username, password } });
  expect([username, r.status]).toEqual([username, 200]);
  secrets.add(r.body.token).add(password);
  const setCookie = sessionCookie(r);
  return { token: r.body.token as string, cookie: setCookie.split(';')[0], setCookie };
}

/** Runs the built users CLI (what `npm run users --` runs after building) in `cwd`, password on stdin. */
function usersCli(cwd: string, args: string[], stdin = ''): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI_JS, ...args], { cwd, env: { PATH: process.env.PATH }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('exit', (code) => resolve({ code, out }));
    p.stdin.end(stdin);
  });
}

let fake: FakeComfy;
beforeAll(async () => {
  fake = await startFakeComfy();
});
afterAll(() => fake.close());

describe('credentials as scripts and browsers really send them (static key, personal tokens, sessions)', () => {
  let c: Child;
  let url: string;
  beforeAll(async () => {
    c = await child({ upstream: fake.url, api_key: TEST_KEY });
    url = c.g.url;
    await firstAdmin(url);
    await addUser(url, 'bob');
  });

  test('every spelling of a good credential works; malformed ones are 401; ComfyUI never sees any of them', async () => {
    fake.clearRequests();
    const good: Record<string, Record<string, string>> = {
      'bearer (lower case)': { authorization: `bearer ${TEST_KEY}` },
      'BEARER (upper case)': { authorization: `BEARER ${TEST_KEY}` },
      'two spaces': { authorization: `Bearer  ${TEST_KEY}` },
      tab: { authorization: `Bearer\t${TEST_KEY}` },
      'trailing blanks': { authorization: `Bearer ${TEST_KEY} \t` },
      'X-API-Key with blanks around': { 'X-API-Key': `  ${TEST_KEY} ` },
      'x-api-key with a tab': { 'x-api-key': `\t${TEST_KEY}` },
      'X-Api-Key mixed case name': { 'X-Api-Key': TEST_KEY },
    };
    for (const [label, headers] of Object.entries(good)) {
      const r = await hit(url, `/object_info?edge-cred-ok`, { headers });
      expect([label, r.status]).toEqual([label, 200]);
    }
    const bad: Record<string, Record<string, string>> = {
      Basic: { authorization: `Basic ${Buffer.from(`api:${TEST_KEY}`).toString('base64')}` },
      'Token scheme': { authorization: `Token ${TEST_KEY}` },
      'no scheme': { authorization: TEST_KEY },
      'Bearer and nothing': { authorization: 'Bearer' },
      'two values': { authorization: `Bearer ${TEST_KEY} ${TEST_KEY}` },
      'empty X-API-Key': { 'x-api-key': '' },
      'key with a prefix': { 'x-api-key': `x${TEST_KEY}` },
    };
    for (const [label, headers] of Object.entries(bad)) {
      const r = await hit(url, `/object_info?edge-cred-bad`, { headers, from: freshLoopback() });
      expect([label, r.status, error(r)]).toEqual([label, 401, 'INVALID_CREDENTIALS']);
    }
    // the key is not a query credential under another case, and no spelling falls through to "no credential"
    const upper = await hit(url, `/object_info?edge-cred-bad&API_KEY=${TEST_KEY}`, { from: freshLoopback() });
    expect([upper.status, error(upper)]).toEqual([401, 'AUTH_REQUIRED']);
    expect(reached(fake, 'edge-cred-ok')).toBe(Object.keys(good).length);
    expect(reached(fake, 'edge-cred-bad')).toBe(0);
    for (const r of fake.requests) {
      expect(r.headers.authorization).toBeUndefined();
      expect(r.headers['x-api-key']).toBeUndefined();
      expect(r.rawPath).not.toContain(TEST_KEY);
    }
  });

  test('X-API-Key with the personal token of a disabled user is 401 — over HTTP and WebSocket — and stays dead after re-enabling', async () => {
    const s = await signIn(url, 'bob');
    const made = await hit(url, '/gateway/api/tokens', {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}` },
      body: { name: 'script', expires_in_hours: 24 },
    });
    expect(made.status).toBe(201);
    const pat = made.body.token as string;
    secrets.add(pat);
    expect((await hit(url, '/object_info?edge-pat-ok', { headers: { 'X-API-Key': pat } })).status).toBe(200);
    expect(await upgradeStatus(url, `/ws?clientId=edge-pat-ok&token=${pat}`)).toBe(101);

    expect((await hit(url, '/gateway/api/users/bob', { method: 'PATCH', headers: KEY, body: { disabled: true } })).status).toBe(200);
    fake.clearRequests();
    for (const headers of [{ 'X-API-Key': pat }, { authorization: `Bearer ${pat}` }] as Record<string, string>[]) {
      const r = await hit(url, '/object_info?edge-pat-off', { headers, from: freshLoopback() });
      expect([r.status, error(r)]).toEqual([401, 'INVALID_CREDENTIALS']);
    }
    expect((await hit(url, `/object_info?edge-pat-off&token=${pat}`, { from: freshLoopback() })).status).toBe(401);
    expect(await upgradeStatus(url, `/ws?clientId=edge-pat-off&token=${pat}`, { from: freshLoopback() })).toBe(401);
    expect(await upgradeStatus(url, '/ws?clientId=edge-pat-off', { headers: { 'X-API-Key': pat }, from: freshLoopback() })).toBe(401);

    expect((await hit(url, '/gateway/api/users/bob', { method: 'PATCH', headers: KEY, body: { disabled: false } })).status).toBe(200);
    expect((await hit(url, '/object_info?edge-pat-off', { headers: { 'X-API-Key': pat }, from: freshLoopback() })).status).toBe(401);
    expect((await hit(url, '/gateway/api/me', { headers: { authorization: `Bearer ${s.token}` }, from: freshLoopback() })).status).toBe(
      401,
    );
    expect(clientTraffic(fake)).toHaveLength(0);
  });

  test('?token=<JWT> in a WebSocket URL opens the socket, never reaches ComfyUI, and dies with the session', async () => {
    const s = await signIn(url, 'bob');
    fake.clearRequests();
    const sock = await openSocket(`${url.replace('http', 'ws')}/ws?clientId=edge-jwt-ws&token=${s.token}`);
    await sock.next((f) => f.json?.type === 'status');
    const upstream = fake.requests.filter((r) => r.ws);
    expect(upstream).toHaveLength(1);
    expect(upstream[0].rawPath).not.toContain(s.token);
    expect(upstream[0].rawPath).not.toMatch(/token=/);
    sock.close();
    await sock.closed;
    // the same token on /api/ws, then signed out: refused before any upstream connection
    expect(await upgradeStatus(url, `/api/ws?clientId=edge-jwt-ws2&token=${s.token}`)).toBe(101);
    expect((await hit(url, '/logout', { method: 'POST', headers: { authorization: `Bearer ${s.token}` } })).status).toBe(200);
    fake.clearRequests();
    expect(await upgradeStatus(url, `/ws?clientId=edge-jwt-ws3&token=${s.token}`, { from: freshLoopback() })).toBe(401);
    expect(fake.requests.filter((r) => r.ws)).toHaveLength(0);
  });

  test('GET /logout with a Bearer token revokes that token; a cross-site navigation cannot sign a browser out', async () => {
    const s = await signIn(url, 'bob');
    const out = await hit(url, '/logout', { headers: { authorization: `Bearer ${s.token}` } });
    expect(out.status).toBe(200);
    expect(out.body).toEqual({ logged_out: true });
    expect(sessionCookie(out)).toMatch(/^jwt_token=;.*Max-Age=0/);
    const after = await hit(url, '/gateway/api/me', { headers: { authorization: `Bearer ${s.token}` }, from: freshLoopback() });
    expect([after.status, error(after)]).toEqual([401, 'TOKEN_REVOKED']);
    // the static key has no session to end, and logging out with it does no harm
    expect((await hit(url, '/logout', { headers: KEY })).status).toBe(200);
    expect((await hit(url, '/object_info?edge-logout', { headers: KEY })).status).toBe(200);

    // A link on another site: the Lax cookie rides a top-level GET navigation.
    const b = await signIn(url, 'bob');
    const nav = { accept: 'text/html', cookie: b.cookie, 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' };
    const crossSite = await hit(url, '/logout', {
      headers: { ...nav, 'sec-fetch-site': 'cross-site', referer: 'https://evil.example/page' },
    });
    expect(crossSite.status).toBe(403);
    expect(crossSite.text).toContain('CSRF_REJECTED');
    const oldBrowser = await hit(url, '/logout', {
      headers: { accept: 'text/html', cookie: b.cookie, referer: 'https://evil.example/page' },
    });
    expect(oldBrowser.status).toBe(403);
    expect((await hit(url, '/gateway/api/me', { headers: { cookie: b.cookie } })).status).toBe(200);
    // typed into the address bar, or a link on the gateway's own pages: signed out, sent to the login page
    const typed = await hit(url, '/logout', { headers: { ...nav, 'sec-fetch-site': 'none' } });
    expect([typed.status, typed.headers.location]).toEqual([302, '/login?signed_out=1']);
    expect((await hit(url, '/gateway/api/me', { headers: { cookie: b.cookie }, from: freshLoopback() })).status).toBe(401);
    const c2 = await signIn(url, 'bob');
    const own = await hit(url, '/logout', { headers: { ...nav, cookie: c2.cookie, 'sec-fetch-site': 'same-origin', referer: `${url}/` } });
    expect([own.status, own.headers.location]).toEqual([302, '/login?signed_out=1']);
  });

  test('/register as a non-admin: the page is served, every way of posting is 403 and nobody is created', async () => {
    const s = await signIn(url, 'bob');
    const page = await hit(url, '/register', { headers: { accept: 'text/html', cookie: s.cookie } });
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toMatch(/text\/html/);
    expect(page.headers['content-security-policy']).toMatch(/script-src 'self'/);
    const attempts: [string, { headers?: Record<string, string>; body: Record<string, string> }][] = [
      ['session cookie', { headers: { cookie: s.cookie, origin: url }, body: { new_user_username: 'eve', new_user_password: PW } }],
      [
        'Bearer session',
        { headers: { authorization: `Bearer ${s.token}` }, body: { new_user_username: 'eve', new_user_password: PW, role: 'admin' } },
      ],
      ['own credentials in the body', { body: { new_user_username: 'eve', new_user_password: PW, username: 'bob', password: PW } }],
    ];
    for (const [label, a] of attempts) {
      const r = await hit(url, '/register', { method: 'POST', headers: a.headers, body: a.body, from: freshLoopback() });
      expect([label, r.status, error(r)]).toEqual([label, 403, 'FORBIDDEN']);
    }
    const anon = await hit(url, '/register', {
      method: 'POST',
      body: { new_user_username: 'eve', new_user_password: PW },
      from: freshLoopback(),
    });
    expect([anon.status, error(anon)]).toEqual([401, 'AUTH_REQUIRED']);
    const users = (await hit(url, '/gateway/api/users', { headers: KEY })).body.users as { username: string }[];
    expect(users.map((u) => u.username).sort()).toEqual(['admin', 'bob']);
  });

  test('refused WebSocket handshakes get an access line too; no password, key, token, cookie or hash in any log line', async () => {
    const guess = 'cgw_guessed-token-0123456789abcdefghijklmnopqrstuvwxyz0';
    secrets.add(guess);
    expect(await upgradeStatus(url, `/ws?clientId=edge-wslog&token=${guess}`, { from: freshLoopback() })).toBe(401);
    expect(await upgradeStatus(url, `/api/ws?clientId=edge-wslog&api_key=${guess}`, { from: freshLoopback() })).toBe(401);
    const file = path.join(c.dataDir, 'comfyui-gateway.log');
    let lines: Record<string, unknown>[] = [];
    await waitFor(() => {
      lines = fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l));
      return lines.filter((l) => String(l.path).includes('edge-wslog')).length === 2;
    }, 2000);
    expect(lines.filter((l) => String(l.path).includes('edge-wslog')).map((l) => [l.status, l.path])).toEqual([
      [401, '/ws?clientId=edge-wslog&token=[redacted]'],
      [401, '/api/ws?clientId=edge-wslog&api_key=[redacted]'],
    ]);
    const everything = fs.readFileSync(file, 'utf8') + c.g.stdout() + c.g.stderr();
    expect(secrets.size).toBeGreaterThan(5);
    for (const secret of secrets) expect(everything.includes(secret) ? secret : null).toBeNull();
    expect(everything).not.toMatch(/\$2[aby]\$\d\d\$/);
    expect(everything).not.toMatch(/jwt_token=[^;\s"]/);
  });
});

describe('/health while ComfyUI is down', () => {
  test('public and authenticated callers get the same up/down answer at once; details come back with ComfyUI', async () => {
    const own = await startFakeComfy();
    try {
      const c = await child({ upstream: own.url, api_key: TEST_KEY });
      const url = c.g.url;
      await firstAdmin(url);
      await addUser(url, 'bob');
      const bob = await signIn(url, 'bob');
      const callers: Record<string, Record<string, string>> = {
        anonymous: {},
        'static key (admin)': KEY,
        'user session': { authorization: `Bearer ${bob.token}` },
        'browser page': { accept: 'text/html' },
      };
      const up = await hit(url, '/health', { headers: KEY });
      expect(up.body).toMatchObject({ status: 'ok', upstream: 'up', queue: expect.anything(), devices: expect.anything() });
      expect(Object.keys((await hit(url, '/health')).body).sort()).toEqual(['status', 'upstream']);

      await own.stop();
      await new Promise((r) => setTimeout(r, 1100)); // the probe is cached for a second
      for (const [label, headers] of Object.entries(callers)) {
        const t = Date.now();
        const r = await hit(url, '/health', { headers });
        // admins also get the gateway's own view of each worker (issue 12), which is most useful exactly now
        const { workers, ...rest } = r.body;
        expect([label, r.status, rest]).toEqual([label, 200, { status: 'degraded', upstream: 'down' }]);
        if (headers === KEY) expect(workers).toEqual([expect.objectContaining({ name: 'default', url: own.url })]);
        else expect(workers).toBeUndefined();
        expect(Date.now() - t).toBeLessThan(1000);
      }
      const proxied = await hit(url, '/object_info', { headers: KEY });
      expect([proxied.status, error(proxied)]).toEqual([502, 'UPSTREAM_UNAVAILABLE']);

      await own.start();
      await waitFor(
        async () => (await hit(url, '/health', { headers: { authorization: `Bearer ${bob.token}` } })).body.upstream === 'up',
        4000,
        200,
      );
      const back = await hit(url, '/health', { headers: { authorization: `Bearer ${bob.token}` } });
      expect(back.body).toMatchObject({ status: 'ok', upstream: 'up', queue: expect.anything() });
      expect(back.body.devices).toBeUndefined(); // machine details are for admins
    } finally {
      await own.close();
    }
  });
});

describe('force_https without TLS (the gateway behind a TLS-terminating proxy)', () => {
  let url: string;
  const PROXY = '127.0.0.2';
  beforeAll(async () => {
    const c = await child({ upstream: fake.url, api_key: TEST_KEY, force_https: true, trusted_proxies: [PROXY] });
    url = c.g.url;
    const r = await hit(url, '/register', {
      method: 'POST',
      from: PROXY,
      headers: { ...KEY, 'x-forwarded-proto': 'https', 'x-forwarded-for': '198.51.100.20' },
      body: { new_user_username: 'admin', new_user_password: PW },
    });
    expect(r.status).toBe(201);
  });

  test('plain HTTP gets 308 and no cookie, even claiming https; the trusted proxy’s https gets a Secure cookie and HSTS', async () => {
    const login = { method: 'POST', body: { username: 'admin', password: PW } };
    const direct = await hit(url, '/login', login);
    expect([direct.status, direct.headers.location]).toEqual([308, `https://${new URL(url).host}/login`]);
    expect(sessionCookie(direct)).toBe('');
    const claiming = await hit(url, '/login', { ...login, from: '127.0.0.9', headers: { 'x-forwarded-proto': 'https' } });
    expect(claiming.status).toBe(308);
    expect(sessionCookie(claiming)).toBe('');
    const proxiedHttp = await hit(url, '/login', {
      ...login,
      from: PROXY,
      headers: { 'x-forwarded-proto': 'http', 'x-forwarded-for': '198.51.100.20' },
    });
    expect(proxiedHttp.status).toBe(308);
    expect(sessionCookie(proxiedHttp)).toBe('');

    const viaProxy = { 'x-forwarded-proto': 'https', 'x-forwarded-for': '198.51.100.20', 'x-forwarded-host': 'comfy.example.org' };
    const ok = await hit(url, '/login', { ...login, from: PROXY, headers: viaProxy });
    expect(ok.status).toBe(200);
    expect(ok.headers['strict-transport-security']).toMatch(/max-age=\d{7,}/);
    const line = sessionCookie(ok);
    expect(line).toMatch(/HttpOnly/i);
    expect(line).toMatch(/SameSite=Lax/i);
    expect(isSecureCookie(line)).toBe(true);
    const out = await hit(url, '/logout', {
      method: 'POST',
      from: PROXY,
      headers: { ...viaProxy, cookie: line.split(';')[0], origin: 'https://comfy.example.org' },
    });
    expect(out.status).toBe(200);
    expect(isSecureCookie(sessionCookie(out))).toBe(true);
    expect(clientTraffic(fake).filter((r) => r.rawPath.includes('login'))).toHaveLength(0);
  });
});

describe('TLS with a real self-signed certificate, force_https and HSTS', () => {
  let url: string;
  let c: Child;
  beforeAll(async () => {
    const certDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-accept-cert-'));
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=IP:127.0.0.1,DNS:localhost',
        '-keyout',
        path.join(certDir, 'key.pem'),
        '-out',
        path.join(certDir, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    );
    c = await child({
      upstream: fake.url,
      api_key: TEST_KEY,
      force_https: true,
      tls: { cert: path.join(certDir, 'cert.pem'), key: path.join(certDir, 'key.pem') },
    });
    children.push({ g: c.g, dir: certDir, dataDir: '' }); // removes the certificate directory too
    url = c.g.url;
    await firstAdmin(url);
  });

  test('HTTPS everywhere with HSTS; the cookie is Secure; wss works same-origin and refuses a foreign Origin; plain bytes on the TLS port harm nothing', async () => {
    expect(url.startsWith('https://')).toBe(true);
    const s = await signIn(url, 'admin');
    expect(isSecureCookie(s.setCookie)).toBe(true);
    for (const [p, headers, status] of [
      ['/login', {}, 200],
      ['/object_info', { cookie: s.cookie }, 200],
      ['/object_info', {}, 401],
      ['/nope/x', KEY, 404],
    ] as const) {
      const r = await hit(url, p, { headers });
      expect([p, r.status]).toEqual([p, status]);
      expect(r.headers['strict-transport-security']).toMatch(/max-age=\d{7,}/);
    }
    const wsUrl = `${url.replace('https', 'wss')}/ws?clientId=edge-tls`;
    const open = (origin: string) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(wsUrl, { headers: { cookie: s.cookie, origin }, rejectUnauthorized: false });
        ws.once('open', () => {
          ws.close();
          resolve(101);
        });
        ws.once('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0));
        ws.once('error', () => resolve(-1));
      });
    expect(await open(url)).toBe(101);
    expect(await open('https://evil.example')).toBe(403);
    // someone typing http:// against the TLS port: the connection is dropped, the gateway keeps serving
    const plain = await new Promise<string>((resolve) => {
      const sock = net.connect(c.g.port, '127.0.0.1');
      let got = '';
      sock.on('data', (d) => (got += d.toString('latin1')));
      sock.on('close', () => resolve(got));
      sock.on('error', () => resolve(got));
      sock.write('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      setTimeout(() => sock.destroy(), 2000);
    });
    expect(plain).not.toContain('200 OK');
    expect((await hit(url, '/health')).status).toBe(200);
  });
});

describe('npm run users against a running gateway (another process, the same store)', () => {
  let c: Child;
  let url: string;
  beforeAll(async () => {
    c = await child({ upstream: fake.url, api_key: TEST_KEY }, { env: { HF_ENDPOINT: 'http://127.0.0.1:9' } });
    url = c.g.url;
    await firstAdmin(url);
    await addUser(url, 'bob');
  });

  test('list, passwd and role act on the running gateway at once', async () => {
    const list = await usersCli(c.dir, ['list']);
    expect(list.code).toBe(0);
    expect(
      list.out
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split('\t').slice(0, 3)),
    ).toEqual([
      ['admin', 'admin', 'enabled'],
      ['bob', 'user', 'enabled'],
    ]);
    const s = await signIn(url, 'bob');
    expect((await hit(url, '/gateway/api/users', { headers: { cookie: s.cookie } })).status).toBe(403);
    expect((await usersCli(c.dir, ['role', 'bob', 'admin'])).code).toBe(0);
    expect((await hit(url, '/gateway/api/users', { headers: { cookie: s.cookie } })).status).toBe(200);
    expect((await usersCli(c.dir, ['role', 'bob', 'user'])).code).toBe(0);
    expect((await usersCli(c.dir, ['passwd', 'bob'], 'bob-new-password-1\n')).code).toBe(0);
    const old = await hit(url, '/gateway/api/me', { headers: { cookie: s.cookie }, from: freshLoopback() });
    expect([old.status, error(old)]).toEqual([401, 'TOKEN_REVOKED']);
    expect((await hit(url, '/login', { method: 'POST', from: freshLoopback(), body: { username: 'bob', password: PW } })).status).toBe(401);
    await signIn(url, 'bob', 'bob-new-password-1');
    const file = path.join(c.dataDir, 'users_db.json');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(file, 'utf8')).not.toContain('bob-new-password-1');
  });

  test('remove: the HuggingFace sign-in of the removed person does not pass to a later user of the same name', async () => {
    // The state the gateway keeps after bob signed in to HuggingFace (data_dir/hf_tokens/<account id>.json).
    const tokens = path.join(c.dataDir, 'hf_tokens');
    fs.mkdirSync(tokens, { recursive: true, mode: 0o700 });
    const bobId = (
      JSON.parse(fs.readFileSync(path.join(c.dataDir, 'users_db.json'), 'utf8')).users as { id: string; username: string }[]
    ).find((u) => u.username === 'bob')!.id;
    const hfFile = path.join(tokens, `${bobId}.json`);
    fs.writeFileSync(
      hfFile,
      JSON.stringify({
        access_token: 'hf_old_bob',
        refresh_token: null,
        expires_at: Date.now() / 1000 + 86400,
        scope: 'read-repos',
        hf_username: 'old-bob',
      }),
      { mode: 0o600 },
    );
    const oldBob = await signIn(url, 'bob', 'bob-new-password-1');
    expect((await hit(url, '/api/hf-auth-token-status', { headers: { authorization: `Bearer ${oldBob.token}` } })).body).toMatchObject({
      token_available: true,
    });

    expect((await usersCli(c.dir, ['remove', 'bob'])).out).toBe('removed bob\n');
    expect(
      (await hit(url, '/gateway/api/me', { headers: { authorization: `Bearer ${oldBob.token}` }, from: freshLoopback() })).status,
    ).toBe(401);
    await addUser(url, 'bob', 'another-person-1');
    const newBob = await signIn(url, 'bob', 'another-person-1');
    const status = await hit(url, '/api/hf-auth-token-status', { headers: { authorization: `Bearer ${newBob.token}` } });
    expect(status.status).toBe(200);
    expect(status.body).toMatchObject({ token_available: false });
    expect(fs.existsSync(hfFile)).toBe(false);
  });

  test('a user added by the CLI while the gateway is busy writing is not overwritten, nor is anything the gateway wrote', async () => {
    // Four lanes of registrations keep the gateway writing from before the CLI starts until after it has finished.
    let cliDone = false;
    const made: string[] = [];
    const statuses: number[] = [];
    let n = 0;
    const lane = async () => {
      for (let after = 0; after < 5; after += cliDone ? 1 : 0) {
        const name = `storm${n++}`;
        const r = await hit(url, '/register', {
          method: 'POST',
          body: { new_user_username: name, new_user_password: PW, username: 'admin', password: PW },
        });
        statuses.push(r.status);
        if (r.status === 201) made.push(name);
      }
    };
    const lanes = Promise.all([lane(), lane(), lane(), lane()]);
    await new Promise((r) => setTimeout(r, 50));
    const added = await usersCli(c.dir, ['add', 'carol'], 'carol-password-1\n');
    cliDone = true;
    await lanes;
    expect(added).toEqual({ code: 0, out: 'added carol (user)\n' });
    expect(statuses.filter((st) => st !== 201)).toEqual([]);
    expect(made.length).toBeGreaterThan(20);
    await signIn(url, 'carol', 'carol-password-1');
    // one more write by the gateway after the storm, then the file on disk holds everyone
    await addUser(url, 'dave');
    const names = (JSON.parse(fs.readFileSync(path.join(c.dataDir, 'users_db.json'), 'utf8')).users as { username: string }[]).map(
      (u) => u.username,
    );
    expect(['admin', 'bob', 'carol', 'dave', ...made].filter((u) => !names.includes(u))).toEqual([]);
  });
});

describe('kill -9 of the real gateway during 100 parallel registrations', () => {
  test('the users file is whole, 0600, holds every acknowledged user, and the restarted gateway writes at once', async () => {
    const c = await child({ upstream: fake.url });
    await firstAdmin(c.g.url);
    const acked: string[] = [];
    const killAt = 20 + crypto.randomInt(40);
    let killed = false;
    // Like a real client, one refused with 429 (too many password checks in flight from this address) tries again.
    const register = async (i: number): Promise<void> => {
      while (!killed) {
        const r = await hit(c.g.url, '/register', {
          method: 'POST',
          body: { new_user_username: `k${i}`, new_user_password: PW, username: 'admin', password: PW },
        }).catch(() => null); // connections cut by the kill
        if (!r) return;
        if (r.status === 429) {
          await new Promise((res) => setTimeout(res, 10 + crypto.randomInt(30)));
          continue;
        }
        if (r.status !== 201) return;
        acked.push(`k${i}`);
        if (acked.length === killAt) {
          killed = true;
          c.g.kill('SIGKILL');
        }
        return;
      }
    };
    await Promise.all(Array.from({ length: 100 }, (_, i) => register(i)));
    expect(await c.g.exited).toBeNull(); // killed by the signal
    expect(acked.length).toBeGreaterThanOrEqual(killAt);
    const file = path.join(c.dataDir, 'users_db.json');
    const data = JSON.parse(fs.readFileSync(file, 'utf8')) as { version: number; users: { username: string }[] };
    expect(data.version).toBe(1);
    const names = new Set(data.users.map((u) => u.username));
    expect(acked.filter((n) => !names.has(n))).toEqual([]);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);

    const again = await child({}, { dir: c.dir });
    await signIn(again.g.url, acked[acked.length - 1]);
    const t = Date.now();
    await addUser(again.g.url, 'after-crash');
    expect(Date.now() - t).toBeLessThan(3000); // whatever the killed process held is not waited for
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).users.some((u: { username: string }) => u.username === 'after-crash')).toBe(true);
  });
});

describe('SIGTERM while a 50 MB upload streams', () => {
  test('the upload completes intact, then the process exits 0 and accepts nothing more', async () => {
    const c = await child({ upstream: fake.url, api_key: TEST_KEY });
    const SIZE = 50 * 1024 * 1024;
    const up = multipartUpload({ filename: 'edge-term.png', size: SIZE, chunk: 256 * 1024 });
    let termAt = 0;
    const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(`${c.g.url}/upload/image`, { method: 'POST', headers: { ...KEY, 'content-type': up.contentType } });
      req.on('response', (r) => {
        let body = '';
        r.on('data', (d) => (body += d));
        r.on('end', () => resolve({ status: r.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      let sent = 0;
      // ~25 MB/s: the signal arrives with 40 MB still to come
      up.stream.on('data', (chunk: Buffer) => {
        sent += chunk.length;
        if (!termAt && sent > 10 * 1024 * 1024) {
          termAt = sent;
          c.g.kill('SIGTERM');
        }
        up.stream.pause();
        const resume = () => setTimeout(() => up.stream.resume(), 10);
        if (req.write(chunk)) resume();
        else req.once('drain', resume);
      });
      up.stream.on('end', () => req.end());
    });
    expect(termAt).toBeGreaterThan(0);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toMatchObject({ name: 'edge-term.png', type: 'input' });
    const saved = path.join(fake.inputDir, JSON.parse(res.body).subfolder ?? '', 'edge-term.png');
    expect(fs.statSync(saved).size).toBe(SIZE);
    expect(crypto.createHash('sha256').update(fs.readFileSync(saved)).digest('hex')).toBe(up.digest());
    expect(await c.g.exited).toBe(0);
    await expect(hit(c.g.url, '/health')).rejects.toThrow();
  });
});

describe('IP lists edited on disk while the gateway runs (dual-stack listener)', () => {
  test('IPv6 and IPv4-mapped entries, added, made malformed, deleted, and whitelists — each applied within 2 s', async () => {
    const c = await child({ upstream: fake.url, api_key: TEST_KEY, host: '::' });
    const v4 = `http://127.0.0.1:${c.g.port}`;
    const v6 = `http://[::1]:${c.g.port}`;
    const bl = path.join(c.dir, 'blacklist.txt');
    const wl = path.join(c.dir, 'whitelist.txt');
    const status = async (base: string, from?: string) => (await hit(base, '/object_info?edge-lists', { headers: KEY, from })).status;
    const becomes = (base: string, from: string | undefined, want: number) =>
      waitFor(async () => (await status(base, from)) === want, 2000, 50);

    expect([await status(v4, '127.0.0.11'), await status(v6)]).toEqual([200, 200]);
    // an IPv4 client written as IPv4-mapped IPv6
    fs.writeFileSync(bl, '# written by hand\n::ffff:127.0.0.11   # mapped\n');
    await becomes(v4, '127.0.0.11', 403);
    const blocked = await hit(v4, '/object_info?edge-lists-blocked', { headers: KEY, from: '127.0.0.11' });
    expect(error(blocked)).toBe('IP_BLOCKED');
    expect([await status(v4, '127.0.0.12'), await status(v6)]).toEqual([200, 200]);
    // replaced by rename, now the IPv6 loopback
    fs.writeFileSync(`${bl}.new`, '::1\n');
    fs.renameSync(`${bl}.new`, bl);
    await becomes(v6, undefined, 403);
    expect(await status(v4, '127.0.0.11')).toBe(200);
    // a malformed line at reload: the last good list stays, the error is logged with its line
    fs.writeFileSync(bl, '::1\n10.0.0.0/33\n127.0.0.12\n');
    await waitFor(() => /blacklist\.txt:2/.test(c.g.stdout()), 2000, 50);
    expect([await status(v6), await status(v4, '127.0.0.12')]).toEqual([403, 200]);
    // deleted: nothing is refused any more
    fs.unlinkSync(bl);
    await becomes(v6, undefined, 200);

    // whitelist of an IPv4-mapped /120 (= 127.0.0.0/24): IPv6 loopback and other IPv4 addresses are out
    fs.writeFileSync(wl, '::ffff:127.0.0.0/120\n');
    await becomes(v6, undefined, 403);
    expect([await status(v4, '127.0.0.11'), await status(v4, '127.0.1.5')]).toEqual([200, 403]);
    expect((await hit(v4, '/health', { from: '127.0.1.5' })).status).toBe(403);
    fs.writeFileSync(wl, '::1/128\n127.0.1.0/24 # the lab\n');
    await becomes(v6, undefined, 200);
    expect([await status(v4, '127.0.0.11'), await status(v4, '127.0.1.5')]).toEqual([403, 200]);
    expect(reached(fake, 'edge-lists-blocked')).toBe(0);
    fs.writeFileSync(wl, '');
    await becomes(v4, '127.0.0.11', 200);
  });
});

describe('blacklist_after_attempts with spoofed forwarding headers', () => {
  test('an untrusted socket is blacklisted by its own address; the addresses it claimed, and its neighbours, are not', async () => {
    const PROXY = '127.0.0.2';
    const c = await child({ upstream: fake.url, api_key: TEST_KEY, blacklist_after_attempts: 3, trusted_proxies: [PROXY] });
    const url = c.g.url;
    await firstAdmin(url);
    const bl = path.join(c.dir, 'blacklist.txt');
    const spoof = (i: number) => ({
      'x-forwarded-for': `203.0.113.${i + 1}`,
      'x-real-ip': '203.0.113.50',
      'cf-connecting-ip': '203.0.113.51',
      forwarded: 'for=203.0.113.52',
      'true-client-ip': '203.0.113.53',
    });
    for (let i = 0; i < 3; i++) {
      const r = await hit(url, '/login', {
        method: 'POST',
        from: '127.0.0.21',
        headers: spoof(i),
        body: { username: 'admin', password: `wrong-${i}` },
      });
      expect(r.status).toBe(401);
    }
    await waitFor(() => fs.existsSync(bl) && fs.readFileSync(bl, 'utf8').includes('127.0.0.21'), 2000);
    expect(fs.readFileSync(bl, 'utf8')).not.toMatch(/203\.0\.113/);
    expect(error(await hit(url, '/health', { from: '127.0.0.21' }))).toBe('IP_BLOCKED');
    expect((await hit(url, '/health', { from: '127.0.0.22', headers: { 'x-forwarded-for': '127.0.0.21' } })).status).toBe(200);
    expect((await hit(url, '/health', { from: PROXY, headers: { 'x-forwarded-for': '203.0.113.1' } })).status).toBe(200);

    // through the trusted proxy, with a client-written left part: the nearest untrusted hop is blacklisted
    for (let i = 0; i < 3; i++) {
      const r = await hit(url, '/object_info?edge-bl', {
        from: PROXY,
        headers: { 'x-forwarded-for': `10.9.9.${i}, 198.51.100.9`, 'x-api-key': `wrong-key-${i}-0123456789` },
      });
      expect(r.status).toBe(401);
    }
    await waitFor(() => fs.readFileSync(bl, 'utf8').includes('198.51.100.9'), 2000);
    expect(fs.readFileSync(bl, 'utf8')).not.toMatch(/10\.9\.9\.|127\.0\.0\.2\b/);
    expect(error(await hit(url, '/health', { from: PROXY, headers: { 'x-forwarded-for': '198.51.100.9' } }))).toBe('IP_BLOCKED');
    expect((await hit(url, '/health', { from: PROXY, headers: { 'x-forwarded-for': '10.9.9.0' } })).status).toBe(200);
    expect(reached(fake, 'edge-bl')).toBe(0);
  });
});

describe('allow_loopback_without_auth on a dual-stack listener', () => {
  test('IPv4, IPv6 and HTTP/1.0 local scripts get in; any forwarding header, however spelled, keeps them out', async () => {
    const c = await child({ upstream: fake.url, allow_loopback_without_auth: true, host: '::' });
    const port = c.g.port;
    const raw = (host: string, request: string) =>
      new Promise<string>((resolve) => {
        const s = net.connect(port, host);
        let got = '';
        s.on('data', (d) => (got += d.toString('latin1')));
        s.on('close', () => resolve(got.split('\r\n')[0]));
        s.on('error', (e) => resolve(`error ${e.message}`));
        s.write(request);
      });
    const get = (extra: string) => `GET /object_info?edge-lb HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n${extra}\r\n`;
    fake.clearRequests();
    expect(await raw('127.0.0.1', get(''))).toBe('HTTP/1.1 200 OK');
    expect(await raw('::1', `GET /object_info?edge-lb HTTP/1.1\r\nHost: [::1]:${port}\r\nConnection: close\r\n\r\n`)).toBe(
      'HTTP/1.1 200 OK',
    );
    expect(await raw('127.0.0.1', 'GET /object_info?edge-lb HTTP/1.0\r\n\r\n')).toBe('HTTP/1.1 200 OK');
    expect(reached(fake, 'edge-lb')).toBe(3);

    const spellings = [
      'x-forwarded-for: 127.0.0.1',
      'X-FORWARDED-FOR: 203.0.113.9',
      'X-Forwarded-For:',
      'x_forwarded_for: 203.0.113.9',
      'X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 127.0.0.1',
      'X-Forwarded-Server: tunnel',
      'X-Original-Forwarded-For: 203.0.113.9',
      'Forwarded: for=127.0.0.1',
      'FORWARDED: for="[::1]"',
      'Via:',
      'X-Real-IP: ::1',
      'Cf_Connecting_Ip: 203.0.113.9',
      'CF-IPCountry: NL',
      'Cf-Access-Authenticated-User-Email: a@example.com',
      'True-Client-IP: 127.0.0.1',
      'X-Client-IP: 203.0.113.9',
      'Fastly-Client-IP: 203.0.113.9',
      'Tailscale-User-Login: someone@example.com',
    ];
    fake.clearRequests();
    for (const h of spellings) {
      expect([h, await raw('127.0.0.1', get(`${h}\r\n`))]).toEqual([h, 'HTTP/1.1 401 Unauthorized']);
      expect([h, await raw('::1', get(`${h}\r\n`))]).toEqual([h, 'HTTP/1.1 401 Unauthorized']);
    }
    expect(await upgradeStatus(`http://[::1]:${port}`, '/ws?clientId=edge-lb', { headers: { 'x-forwarded-proto': 'https' } })).toBe(401);
    expect(reached(fake, 'edge-lb')).toBe(0);
  });
});

describe('Cloudflare Access: audiences as arrays, wrong keys, clock leeway', () => {
  test('any configured audience matches; wrong key, expired beyond the leeway, and foreign audiences are refused before ComfyUI', async () => {
    const TEAM = 'acme-edge.cloudflareaccess.com';
    const ISS = `https://${TEAM}`;
    const pair = (kid: string) => {
      const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      return { kid, privateKey, jwk: { ...(publicKey.export({ format: 'jwk' }) as object), kid, alg: 'RS256', use: 'sig' } };
    };
    const team = pair('team-1');
    const forger = pair('forger-1');
    const jwks = http.createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [team.jwk] }));
    });
    await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', () => r()));
    try {
      const certs = `http://127.0.0.1:${(jwks.address() as { port: number }).port}/cdn-cgi/access/certs`;
      const c = await child({
        upstream: fake.url,
        cloudflare_access: { team_domain: TEAM, audience: ['aud-app', 'aud-old-app'], certs_url: certs, auto_provision: true },
      });
      const now = Math.floor(Date.now() / 1000);
      const sign = (claims: Record<string, unknown>, key = team, kid = key.kid) =>
        jwt.sign({ iss: ISS, iat: now, exp: now + 600, email: 'carol@example.com', ...claims }, key.privateKey, {
          algorithm: 'RS256',
          keyid: kid,
        });
      const as = (assertion: string, marker: string) =>
        hit(c.g.url, `/object_info?${marker}`, { headers: { 'Cf-Access-Jwt-Assertion': assertion } });
      fake.clearRequests();
      const accepted: Record<string, string> = {
        'aud array, second configured audience': sign({ aud: ['aud-old-app'] }),
        'aud as a plain string': sign({ aud: 'aud-app' }),
        'aud array with another app first': sign({ aud: ['someone-else', 'aud-app'] }),
        'expired 10 s ago (within the leeway)': sign({ aud: ['aud-app'], exp: now - 10, iat: now - 700 }),
        'e-mail in capitals': sign({ aud: ['aud-app'], email: 'CAROL@Example.COM' }),
      };
      for (const [label, a] of Object.entries(accepted)) expect([label, (await as(a, 'edge-cf-ok')).status]).toEqual([label, 200]);
      const me = await hit(c.g.url, '/gateway/api/me', { headers: { 'Cf-Access-Jwt-Assertion': accepted['aud as a plain string'] } });
      expect(me.body).toMatchObject({ username: 'carol', role: 'user', source: 'cf-access' });

      const refused: Record<string, string> = {
        'foreign audience only': sign({ aud: ['someone-else'] }),
        'empty audience array': sign({ aud: [] }),
        'no audience': sign({}),
        'both audiences as one string': sign({ aud: 'aud-app aud-old-app' }),
        'signed by another key under the team kid': sign({ aud: ['aud-app'] }, forger, team.kid),
        'signed by another key under its own kid': sign({ aud: ['aud-app'] }, forger),
        'expired two minutes ago': sign({ aud: ['aud-app'], exp: now - 120, iat: now - 700 }),
        'not valid for two more minutes': sign({ aud: ['aud-app'], nbf: now + 120 }),
        'issuer with a trailing slash': sign({ aud: ['aud-app'], iss: `${ISS}/` }),
      };
      for (const [label, a] of Object.entries(refused)) {
        const r = await as(a, 'edge-cf-bad');
        expect([label, r.status, error(r)]).toEqual([label, 401, 'INVALID_CREDENTIALS']);
      }
      expect(reached(fake, 'edge-cf-ok')).toBe(Object.keys(accepted).length);
      expect(reached(fake, 'edge-cf-bad')).toBe(0);
      expect(fake.requests.some((r) => r.headers['cf-access-jwt-assertion'] !== undefined)).toBe(false);
    } finally {
      await new Promise((r) => jwks.close(r));
    }
  });
});

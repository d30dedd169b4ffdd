import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PW, registerFirstAdmin } from './helpers/auth';
import { hit, reached, upgradeStatus } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

const KEY = { 'x-api-key': TEST_KEY };

/** A throw-away self-signed certificate for 127.0.0.1 / localhost. */
function selfSigned(): { cert: string; key: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-cert-'));
  try {
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
        path.join(dir, 'key.pem'),
        '-out',
        path.join(dir, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    );
    return { cert: fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'), key: fs.readFileSync(path.join(dir, 'key.pem'), 'utf8') };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const cookieOf = (res: { headers: Record<string, unknown> }) =>
  ([] as string[]).concat((res.headers['set-cookie'] as string[] | undefined) ?? []).find((c) => c.startsWith('jwt_token=')) ?? '';
const isSecureCookie = (line: string) => /;\s*Secure(;|$)/i.test(line);

let fake: FakeComfy;
beforeAll(async () => {
  fake = await startFakeComfy();
});
afterAll(() => fake.close());

describe('tls {cert, key}: the gateway serves HTTPS', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    const { cert, key } = selfSigned();
    gw = await startGateway(
      { upstream: fake.url, api_key: TEST_KEY, tls: { cert: 'tls/cert.pem', key: 'tls/key.pem' } },
      { files: { 'tls/cert.pem': cert, 'tls/key.pem': key } },
    );
    await registerFirstAdminTls(gw);
  });
  afterAll(() => gw.close());

  async function registerFirstAdminTls(g: TestGateway) {
    const r = await hit(g.url, '/register', { method: 'POST', body: { new_user_username: 'admin', new_user_password: PW } });
    expect(r.status).toBe(201);
  }

  test('HTTPS with HSTS on gateway pages, errors and proxied ComfyUI responses; ComfyUI is told https', async () => {
    expect(gw.url.startsWith('https://')).toBe(true);
    for (const p of ['/health', '/login', '/object_info']) {
      const res = await hit(gw.url, p, { headers: p === '/object_info' ? KEY : {} });
      expect([p, res.status]).toEqual([p, 200]);
      expect(res.headers['strict-transport-security']).toMatch(/max-age=\d{7,}/);
    }
    const refused = await hit(gw.url, '/object_info');
    expect(refused.status).toBe(401);
    expect(refused.headers['strict-transport-security']).toMatch(/max-age=/);
    fake.clearRequests();
    await hit(gw.url, '/object_info?edge-tls', { headers: KEY });
    expect(fake.requests.find((r) => r.rawPath.includes('edge-tls'))?.headers['x-forwarded-proto']).toBe('https');
  });

  test('the session cookie is Secure', async () => {
    const res = await hit(gw.url, '/login', { method: 'POST', body: { username: 'admin', password: PW } });
    expect(res.status).toBe(200);
    const line = cookieOf(res);
    expect(line).toMatch(/HttpOnly/i);
    expect(isSecureCookie(line)).toBe(true);
  });
});

describe('plain HTTP without force_https', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, trusted_proxies: ['127.0.0.2'] });
    await registerFirstAdmin(gw);
  });
  afterAll(() => gw.close());

  const loginFrom = (from: string, headers: Record<string, string> = {}) =>
    hit(gw.url, '/login', { method: 'POST', from, headers, body: { username: 'admin', password: PW } });

  test('no HSTS, no Secure cookie — and an untrusted X-Forwarded-Proto: https changes neither', async () => {
    const plain = await loginFrom('127.0.0.3');
    expect(plain.status).toBe(200);
    expect(isSecureCookie(cookieOf(plain))).toBe(false);
    expect(plain.headers['strict-transport-security']).toBeUndefined();
    const spoofed = await loginFrom('127.0.0.3', { 'X-Forwarded-Proto': 'https', Forwarded: 'proto=https', 'X-Forwarded-Ssl': 'on' });
    expect(spoofed.status).toBe(200);
    expect(isSecureCookie(cookieOf(spoofed))).toBe(false);
    expect(spoofed.headers['strict-transport-security']).toBeUndefined();
    fake.clearRequests();
    await hit(gw.url, '/object_info?edge-proto', { from: '127.0.0.3', headers: { ...KEY, 'X-Forwarded-Proto': 'https' } });
    expect(fake.requests.find((r) => r.rawPath.includes('edge-proto'))?.headers['x-forwarded-proto']).toBe('http');
  });

  test("a trusted proxy's X-Forwarded-Proto: https makes the cookie Secure and adds HSTS", async () => {
    const res = await loginFrom('127.0.0.2', { 'X-Forwarded-Proto': 'https', 'X-Forwarded-For': '198.51.100.1' });
    expect(res.status).toBe(200);
    expect(isSecureCookie(cookieOf(res))).toBe(true);
    expect(res.headers['strict-transport-security']).toMatch(/max-age=/);
    const http = await loginFrom('127.0.0.2', { 'X-Forwarded-Proto': 'http' });
    expect(isSecureCookie(cookieOf(http))).toBe(false);
  });
});

describe('force_https', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, force_https: true, trusted_proxies: ['127.0.0.2'] });
    await registerFirstAdminOverProxy(gw);
  });
  afterAll(() => gw.close());

  async function registerFirstAdminOverProxy(g: TestGateway) {
    // first-run registration by setup code is not the point here; the loopback path needs no forwarding headers
    const r = await hit(g.url, '/register', { method: 'POST', body: { new_user_username: 'admin', new_user_password: PW } });
    expect(r.status).toBe(308); // even registration is redirected over plain HTTP
    const viaProxy = await hit(g.url, '/gateway/api/users', {
      method: 'POST',
      from: '127.0.0.2',
      headers: { ...KEY, 'X-Forwarded-Proto': 'https' },
      body: { username: 'admin', password: PW, role: 'admin' },
    });
    expect(viaProxy.status).toBe(201);
  }

  test('plain HTTP gets 308 to the https:// URL (path and query kept, any method), and nothing reaches ComfyUI', async () => {
    fake.clearRequests();
    const port = new URL(gw.url).port;
    const get = await hit(gw.url, '/object_info?edge-force=1&b=2', { headers: KEY });
    expect(get.status).toBe(308);
    expect(get.headers.location).toBe(`https://127.0.0.1:${port}/object_info?edge-force=1&b=2`);
    const post = await hit(gw.url, '/prompt?edge-force', { method: 'POST', headers: KEY, body: { prompt: {} } });
    expect(post.status).toBe(308);
    expect(post.headers.location).toBe(`https://127.0.0.1:${port}/prompt?edge-force`);
    const named = await hit(gw.url, '/login', { headers: { host: 'comfy.example.com' } });
    expect(named.status).toBe(308);
    expect(named.headers.location).toBe('https://comfy.example.com/login');
    expect(reached(fake, 'edge-force')).toBe(0);
  });

  test('an untrusted client claiming X-Forwarded-Proto: https is still redirected', async () => {
    const res = await hit(gw.url, '/object_info?edge-force', { from: '127.0.0.3', headers: { ...KEY, 'X-Forwarded-Proto': 'https' } });
    expect(res.status).toBe(308);
    expect(reached(fake, 'edge-force')).toBe(0);
  });

  test('a trusted proxy saying the original was HTTPS is served (with HSTS), and its X-Forwarded-Host is the redirect target otherwise', async () => {
    fake.clearRequests();
    const res = await hit(gw.url, '/object_info?edge-force', { from: '127.0.0.2', headers: { ...KEY, 'X-Forwarded-Proto': 'https' } });
    expect(res.status).toBe(200);
    expect(res.headers['strict-transport-security']).toMatch(/max-age=/);
    expect(reached(fake, 'edge-force')).toBe(1);
    const login = await hit(gw.url, '/login', {
      method: 'POST',
      from: '127.0.0.2',
      headers: { 'X-Forwarded-Proto': 'https' },
      body: { username: 'admin', password: PW },
    });
    expect(login.status).toBe(200);
    expect(isSecureCookie(cookieOf(login))).toBe(true);
    const viaHttp = await hit(gw.url, '/x?y', {
      from: '127.0.0.2',
      headers: { 'X-Forwarded-Proto': 'http', 'X-Forwarded-Host': 'comfy.example.com' },
    });
    expect(viaHttp.status).toBe(308);
    expect(viaHttp.headers.location).toBe('https://comfy.example.com/x?y');
  });

  test('WebSocket upgrades over plain HTTP are refused (403), over a trusted HTTPS proxy accepted', async () => {
    fake.clearRequests();
    expect(await upgradeStatus(gw.url, '/ws?clientId=edge-force', { headers: KEY })).toBe(403);
    expect(
      await upgradeStatus(gw.url, '/ws?clientId=edge-force', { from: '127.0.0.3', headers: { ...KEY, 'X-Forwarded-Proto': 'https' } }),
    ).toBe(403);
    expect(reached(fake, 'edge-force')).toBe(0);
    expect(
      await upgradeStatus(gw.url, '/ws?clientId=edge-force', { from: '127.0.0.2', headers: { ...KEY, 'X-Forwarded-Proto': 'https' } }),
    ).toBe(101);
  });

  test('a Host that is not a host name is not echoed into a redirect', async () => {
    const res = await hit(gw.url, '/', { headers: { host: 'evil.example/path?' } });
    expect(res.status).toBe(400);
    expect(res.headers.location).toBeUndefined();
  });
});

describe('security headers', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
  });
  afterAll(() => gw.close());

  test("gateway pages and API: CSP (script-src 'self', frame-ancestors 'none'), nosniff, referrer policy, no framing", async () => {
    for (const p of ['/login', '/register', '/gateway/api/ip-lists', '/gateway/static/gateway.css', '/health']) {
      const res = await hit(gw.url, p, { headers: KEY });
      const csp = String(res.headers['content-security-policy']);
      expect([p, csp]).toEqual([p, expect.stringContaining("script-src 'self'")]);
      expect(csp).toContain("frame-ancestors 'none'");
      expect(csp).not.toContain('unsafe-inline');
      expect(res.headers['x-content-type-options']).toBe('nosniff');
      expect(res.headers['referrer-policy']).toBe('same-origin');
      expect(res.headers['x-frame-options']).toBe('DENY');
    }
  });

  test('proxied ComfyUI responses get nosniff only (its frontend keeps its inline scripts)', async () => {
    const res = await hit(gw.url, '/object_info', { headers: KEY });
    expect(res.status).toBe(200);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['content-security-policy']).toBeUndefined();
    expect(res.headers['x-frame-options']).toBeUndefined();
    expect(res.headers['strict-transport-security']).toBeUndefined();
  });
});

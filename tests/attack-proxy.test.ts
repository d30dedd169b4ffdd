/**
 * Attacks on the front door and the proxy: request-target forms, header games, path and query encodings that a
 * later parser reads differently, CSRF through ambient credentials, malformed WebSocket handshakes, log leaks.
 * Every refusal is checked from outside, and against what reached the fake ComfyUI.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import jwt from 'jsonwebtoken';
import { PW, adminAndUser } from './helpers/auth';
import { hit, waitFor } from './helpers/edge';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { clientTraffic } from './helpers/traffic';
import { openSocket } from './helpers/ws';
import { useStack } from './helpers/stack';
import { rawExchange } from './helpers/rawSocket';

const EVIL = 'http://evil.example';

const raw = (port: number, data: string | Buffer, waitMs = 600) => rawExchange(port, data, waitMs);
const statusOf = (response: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? 0);

const stack = useStack();
let alice: { token: string; cookie: string };
let admin: { token: string; cookie: string };

beforeAll(async () => {
  ({ user: alice, admin } = await adminAndUser(stack.gw, 'alice'));
});
beforeEach(() => stack.fake.clearRequests());

describe('request targets and header games', () => {
  test('absolute-form, OPTIONS *, CONNECT, lower-case methods, TE+CL, two Content-Lengths, obs-fold: refused, nothing proxied', async () => {
    const key = `X-API-Key: ${TEST_KEY}\r\nConnection: close\r\n`;
    const cases: [string, string, number[]][] = [
      ['absolute-form', `GET http://127.0.0.1/prompt HTTP/1.1\r\nHost: x\r\n${key}\r\n`, [400]],
      ['OPTIONS *', `OPTIONS * HTTP/1.1\r\nHost: x\r\n${key}\r\n`, [400]],
      ['CONNECT', `CONNECT 127.0.0.1:8188 HTTP/1.1\r\nHost: x\r\n${key}\r\n`, [0, 400]],
      ['lower-case method', `get /prompt HTTP/1.1\r\nHost: x\r\n${key}\r\n`, [400]],
      ['TE and CL', `POST /prompt HTTP/1.1\r\nHost: x\r\n${key}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, [400]],
      ['two CLs', `POST /prompt HTTP/1.1\r\nHost: x\r\n${key}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}`, [400]],
      ['obs-fold', `GET /prompt HTTP/1.1\r\nHost: x\r\n${key}X-Foo: a\r\n b\r\n\r\n`, [400]],
      ['bad TE', `POST /prompt HTTP/1.1\r\nHost: x\r\n${key}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`, [400]],
    ];
    for (const [name, req, expected] of cases) {
      const status = statusOf(await raw(stack.gw.port, req));
      if (!expected.includes(status)) throw new Error(`${name}: ${status}`);
    }
    expect(clientTraffic(stack.fake)).toHaveLength(0);
  });

  test('two X-API-Key headers are one invalid credential; Connection cannot keep a client comfy-user', async () => {
    const two = await raw(
      stack.gw.port,
      `GET /prompt HTTP/1.1\r\nHost: x\r\nX-API-Key: ${TEST_KEY}\r\nX-API-Key: other\r\nConnection: close\r\n\r\n`,
    );
    expect(statusOf(two)).toBe(401);
    expect(clientTraffic(stack.fake)).toHaveLength(0);
    const conn = await raw(
      stack.gw.port,
      `GET /prompt?conn-trick HTTP/1.1\r\nHost: x\r\nX-API-Key: ${TEST_KEY}\r\nConnection: close, comfy-user, x-forwarded-for\r\ncomfy-user: someone-else\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n`,
    );
    expect(statusOf(conn)).toBe(200);
    const seen = clientTraffic(stack.fake).find((r) => r.rawPath.includes('conn-trick'))!;
    expect(seen.headers['comfy-user']).not.toBe('someone-else');
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-api-key']).toBeUndefined();
  });
});

describe('gateway routes: the path Express routes on is the path the policy decided on', () => {
  test('a signed-in user cannot reach the admin API through an encoded ? or # (no admin created, no list)', async () => {
    const auth = { Authorization: `Bearer ${alice.token}` };
    for (const p of ['/gateway/api/users%3F', '/gateway/api/users%3Fx', '/gateway/api/users%23', '/api/gateway/api/users%3F']) {
      const list = await hit(stack.gw.url, p, { headers: auth });
      expect([p, list.status, list.body?.users]).toEqual([p, 404, undefined]);
    }
    const made = await hit(stack.gw.url, '/gateway/api/users%3F', {
      method: 'POST',
      headers: auth,
      body: { username: 'mallory', password: PW, role: 'admin' },
    });
    expect(made.status).toBe(404);
    expect(stack.gw.composed.users.get('mallory')).toBeUndefined();
    // the admin still reaches the real route, and route parameters are decoded exactly once
    expect((await hit(stack.gw.url, '/gateway/api/users', { headers: { Authorization: `Bearer ${admin.token}` } })).status).toBe(200);
    const once = await hit(stack.gw.url, '/gateway/api/users/%2561lice', {
      method: 'PATCH',
      headers: { 'X-API-Key': TEST_KEY },
      body: { disabled: false },
    });
    expect(once.status).toBe(404);
    expect(
      (
        await hit(stack.gw.url, '/gateway/api/users/%61lice', {
          method: 'PATCH',
          headers: { 'X-API-Key': TEST_KEY },
          body: { disabled: false },
        })
      ).status,
    ).toBe(200);
    expect(clientTraffic(stack.fake)).toHaveLength(0);
  });
});

describe('credentials in the query', () => {
  test('a percent-encoded api_key/token parameter name is stripped upstream and redacted in the log', async () => {
    const res = await hit(stack.gw.url, `/prompt?enc-key=1&%61pi_key=${TEST_KEY}&%74oken=${alice.token}`);
    expect(res.status).toBe(200);
    const seen = clientTraffic(stack.fake).find((r) => r.rawPath.includes('enc-key'))!;
    expect(seen.rawPath).toBe('/prompt?enc-key=1');
    const text = JSON.stringify(await flushedLogs(stack.gw));
    expect(text).not.toContain(TEST_KEY);
    expect(text).not.toContain(alice.token);
  });
});

describe('streams that end early', () => {
  const busyUpstreamSockets = () => Object.values(stack.gw.composed.upstream.agent.sockets).reduce((n, list) => n + (list?.length ?? 0), 0);

  test('a client that leaves mid-download releases the upstream socket (else 64 aborted videos stall every user)', async () => {
    fs.writeFileSync(`${stack.fake.outputDir}/big-abort.bin`, Buffer.alloc(32 * 1024 * 1024, 7));
    for (let i = 0; i < 3; i++) {
      await new Promise<void>((resolve, reject) => {
        const req = http.get(
          `${stack.gw.url}/view?filename=big-abort.bin&type=output&n=${i}`,
          { headers: { 'X-API-Key': TEST_KEY }, agent: false },
          (res) => {
            if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`));
            res.once('data', () => {
              req.destroy();
              resolve();
            });
          },
        );
        req.on('error', () => undefined);
      });
    }
    await waitFor(() => busyUpstreamSockets() === 0, 3000).catch(() => undefined);
    expect(busyUpstreamSockets()).toBe(0);
    expect((await hit(stack.gw.url, '/queue', { headers: { 'X-API-Key': TEST_KEY } })).status).toBe(200);
  });

  test('an upstream that dies mid-body does not leave the client waiting for bytes that never come', async () => {
    const up = http.createServer((req, res) => {
      if (req.url === '/users')
        return void res.writeHead(200, { 'content-type': 'application/json' }).end(req.method === 'POST' ? '"u1"' : '{}');
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '100000' });
      res.write('0123456789');
      setTimeout(() => res.socket?.destroy(), 50);
    });
    await new Promise<void>((r) => up.listen(0, '127.0.0.1', () => r()));
    const g = await startGateway({ upstream: `http://127.0.0.1:${(up.address() as net.AddressInfo).port}`, api_key: TEST_KEY });
    try {
      const outcome = await new Promise<string>((resolve) => {
        const req = http.get(
          `${g.url}/some/custom-node/stream`,
          { headers: { 'X-API-Key': TEST_KEY }, agent: false, timeout: 3000 },
          (res) => {
            res.resume();
            res.on('end', () => resolve('ended'));
            res.on('aborted', () => resolve('aborted'));
            res.on('error', () => resolve('aborted'));
          },
        );
        req.on('timeout', () => {
          req.destroy();
          resolve('hung');
        });
        req.on('error', () => resolve('aborted'));
      });
      expect(outcome).toBe('aborted');
    } finally {
      await g.close();
      up.closeAllConnections();
      await new Promise((r) => up.close(r));
    }
  });
});

describe('WebSocket handshakes', () => {
  const upgrade = (lines: string) => raw(stack.gw.port, `${lines}Host: x\r\nX-API-Key: ${TEST_KEY}\r\n\r\n`, 400);

  test('malformed upgrades to /ws (wrong Upgrade, no or bad key, POST) are refused and leave no socket open on ComfyUI', async () => {
    const key = 'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n';
    const bad = [
      `GET /ws?clientId=m1 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n${key}`,
      'GET /ws?clientId=m2 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n',
      'GET /ws?clientId=m3 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n',
      `GET /ws?clientId=m4 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 99\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n`,
      `POST /api/ws?clientId=m5 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n${key}`,
    ];
    for (const lines of bad) {
      const status = statusOf(await upgrade(lines));
      if (status < 400) throw new Error(`accepted: ${lines.split('\r\n')[0]} → ${status}`);
    }
    await waitFor(() => stack.fake.wsClients().length === 0, 3000).catch(() => undefined);
    expect(stack.fake.wsClients()).toEqual([]);
    // a proper handshake still works
    const s = await openSocket(`${stack.gw.url.replace(/^http/, 'ws')}/ws?clientId=ok-after`, { 'X-API-Key': TEST_KEY });
    await s.next((f) => f.json?.type === 'status');
    expect(stack.fake.wsClients()).toHaveLength(1);
    s.close();
    await waitFor(() => stack.fake.wsClients().length === 0);
  });
});

describe('CSRF through ambient credentials', () => {
  test('ComfyUI-Manager changes state on GET: a cross-site navigation with the admin cookie is refused, our own pages and scripts pass', async () => {
    const crossSite: Record<string, string>[] = [
      { 'Sec-Fetch-Site': 'cross-site', 'Sec-Fetch-Mode': 'navigate', 'Sec-Fetch-Dest': 'document' },
      { 'Sec-Fetch-Site': 'same-site', 'Sec-Fetch-Mode': 'navigate' },
      { Referer: `${EVIL}/page` }, // a browser without Fetch metadata
    ];
    for (const p of [
      '/api/manager/reboot',
      '/manager/queue/update_all',
      '/api/snapshot/restore?target=x',
      '/v2/manager/reboot',
      '/api/manager%2Freboot',
    ]) {
      for (const method of ['GET', 'HEAD']) {
        for (const h of crossSite) {
          const res = await hit(stack.gw.url, p, { method, headers: { Cookie: admin.cookie, ...h } });
          expect([p, method, res.status]).toEqual([p, method, 403]);
          if (method === 'GET') expect(res.body.error.code).toBe('CSRF_REJECTED');
        }
      }
    }
    expect(clientTraffic(stack.fake)).toHaveLength(0);
    // the manager's own page (same origin), a typed URL, a script with a header credential: all reach it
    expect(
      (
        await hit(stack.gw.url, '/api/manager/reboot', {
          headers: { Cookie: admin.cookie, 'Sec-Fetch-Site': 'same-origin', Referer: `${stack.gw.url}/` },
        })
      ).status,
    ).toBe(200);
    expect((await hit(stack.gw.url, '/api/manager/reboot', { headers: { Cookie: admin.cookie, 'Sec-Fetch-Site': 'none' } })).status).toBe(
      200,
    );
    expect(
      (await hit(stack.gw.url, '/api/manager/reboot', { headers: { 'X-API-Key': TEST_KEY, 'Sec-Fetch-Site': 'cross-site' } })).status,
    ).toBe(200);
    expect(clientTraffic(stack.fake).filter((r) => r.rawPath.includes('reboot'))).toHaveLength(3);
    // plain ComfyUI pages stay linkable from other sites
    const page = await hit(stack.gw.url, '/queue', {
      headers: { Cookie: alice.cookie, 'Sec-Fetch-Site': 'cross-site', 'Sec-Fetch-Mode': 'navigate' },
    });
    expect(page.status).toBe(200);
  });
});

describe('CSRF with Cloudflare Access (the edge adds the assertion from its own cookie)', () => {
  const TEAM = 'attack-team.cloudflareaccess.com';
  const AUD = 'aud-attack-0123456789';
  let jwks: http.Server;
  let cf: TestGateway;
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const assertion = (email = 'carol@example.com') => {
    const now = Math.floor(Date.now() / 1000);
    return jwt.sign({ aud: [AUD], iss: `https://${TEAM}`, iat: now, nbf: now - 5, exp: now + 600, sub: 'u1', email }, privateKey, {
      algorithm: 'RS256',
      keyid: 'k1',
    });
  };
  beforeAll(async () => {
    jwks = http.createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [{ ...(publicKey.export({ format: 'jwk' }) as object), kid: 'k1', alg: 'RS256', use: 'sig' }] }));
    });
    await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', () => r()));
    const certs = `http://127.0.0.1:${(jwks.address() as { port: number }).port}/cdn-cgi/access/certs`;
    cf = await startGateway({
      upstream: stack.fake.url,
      api_key: TEST_KEY,
      cloudflare_access: { team_domain: TEAM, audience: AUD, certs_url: certs, auto_provision: true },
    });
  });
  afterAll(async () => {
    await cf.close();
    await new Promise((r) => jwks.close(r));
  });

  test('a page of another site cannot post a prompt, open the WebSocket or make a token as the Access user; scripts without Origin can', async () => {
    const h = () => ({ 'Cf-Access-Jwt-Assertion': assertion() });
    const prompt = { prompt: {}, client_id: 'cf-csrf' };
    const foreign: Record<string, string>[] = [{ Origin: EVIL }, { Origin: 'null' }, { 'Sec-Fetch-Site': 'cross-site', Origin: EVIL }];
    for (const extra of foreign) {
      const res = await hit(cf.url, '/api/prompt?cf-csrf', { method: 'POST', headers: { ...h(), ...extra }, body: prompt });
      expect([res.status, res.body.error.code]).toEqual([403, 'CSRF_REJECTED']);
      const tok = await hit(cf.url, '/gateway/api/tokens', { method: 'POST', headers: { ...h(), ...extra }, body: { name: 'stolen' } });
      expect([tok.status, tok.body.error.code]).toEqual([403, 'CSRF_REJECTED']);
    }
    await expect(openSocket(`${cf.url.replace(/^http/, 'ws')}/ws?clientId=cf-csrf`, { ...h(), Origin: EVIL })).rejects.toMatchObject({
      status: 403,
    });
    expect(clientTraffic(stack.fake).filter((r) => r.rawPath.includes('cf-csrf'))).toHaveLength(0);
    expect(cf.composed.users.tokens.list('carol')).toEqual([]);

    // a service-token script (no Origin) and the Access user's own pages keep working
    expect((await hit(cf.url, '/gateway/api/tokens', { method: 'POST', headers: h(), body: { name: 'script' } })).status).toBe(201);
    expect(
      (await hit(cf.url, '/gateway/api/tokens', { method: 'POST', headers: { ...h(), Origin: cf.url }, body: { name: 'page' } })).status,
    ).toBe(201);
    const s = await openSocket(`${cf.url.replace(/^http/, 'ws')}/ws?clientId=cf-own`, { ...h(), Origin: cf.url });
    s.close();
  });
});

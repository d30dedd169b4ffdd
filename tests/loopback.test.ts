import http from 'node:http';
import os from 'node:os';
import { hit, reached, upgradeStatus } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

/** Every kind of header a proxy, tunnel daemon or CDN on this host adds (sent one at a time). */
const FORWARDING: Record<string, string> = {
  'X-Forwarded-For': '203.0.113.9',
  'X-Forwarded-Proto': 'https',
  'X-Forwarded-Host': 'comfy.example.com',
  'X-Forwarded-Port': '443',
  Forwarded: 'for=203.0.113.9;proto=https',
  'X-Real-IP': '203.0.113.9',
  'CF-Connecting-IP': '203.0.113.9',
  'True-Client-IP': '203.0.113.9',
  'Cf-Access-Jwt-Assertion': 'x.y.z',
  'Cf-Access-Authenticated-User-Email': 'a@example.com',
  'CF-Ray': '8a1b2c3d4e5f-AMS',
  'CF-Visitor': '{"scheme":"https"}',
  Via: '1.1 tunnel',
};

let fake: FakeComfy;
beforeAll(async () => {
  fake = await startFakeComfy();
});
afterAll(() => fake.close());
beforeEach(() => fake.clearRequests());

describe('allow_loopback_without_auth: off by default', () => {
  test('a credential-less request from loopback is 401 and reaches nothing', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
    try {
      const res = await hit(gw.url, '/object_info?edge-lb');
      expect(res.status).toBe(401);
      expect(res.body.error.code).toBe('AUTH_REQUIRED');
      expect(reached(fake, 'edge-lb')).toBe(0);
    } finally {
      await gw.close();
    }
  });
});

describe('allow_loopback_without_auth: true (identity api-key)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, allow_loopback_without_auth: true, trusted_proxies: ['127.0.0.2'] });
  });
  afterAll(() => gw.close());

  test('local scripts keep working unchanged: no credentials, proxied as the static-key admin', async () => {
    const res = await hit(gw.url, '/object_info?edge-lb');
    expect(res.status).toBe(200);
    expect(reached(fake, 'edge-lb')).toBe(1);
    const me = await hit(gw.url, '/gateway/api/me', { headers: { host: 'localhost' } });
    expect(me.status).toBe(200);
    expect(me.body).toMatchObject({ username: 'api-key', role: 'admin', source: 'loopback' });
    // from any 127/8 address, over the /api twin too
    expect((await hit(gw.url, '/api/object_info?edge-lb', { from: '127.0.0.3' })).status).toBe(200);
    expect((await hit(gw.url, '/gateway/api/audit?limit=1')).status).toBe(200);
  });

  test('refused whenever any forwarding header is present — a tunnel daemon on this host must not make the internet local', async () => {
    for (const [name, value] of Object.entries(FORWARDING)) {
      const res = await hit(gw.url, '/object_info?edge-lb', { headers: { [name]: value } });
      expect([name, res.status, res.body.error.code]).toEqual([name, 401, 'AUTH_REQUIRED']);
      const up = await upgradeStatus(gw.url, '/ws?clientId=edge-lb', { headers: { [name]: value } });
      expect([name, up]).toEqual([name, 401]);
    }
    expect(reached(fake, 'edge-lb')).toBe(0);
  });

  test('also through a trusted proxy on loopback: a forwarded request is never "local"', async () => {
    const res = await hit(gw.url, '/object_info?edge-lb', { from: '127.0.0.2', headers: { 'X-Forwarded-For': '127.0.0.1' } });
    expect(res.status).toBe(401);
    expect(reached(fake, 'edge-lb')).toBe(0);
  });

  test('browsers: another site posting to 127.0.0.1, and DNS rebinding, are refused', async () => {
    const port = new URL(gw.url).port;
    const crossSite = await hit(gw.url, '/prompt?edge-lb', {
      method: 'POST',
      headers: { origin: 'https://evil.example' },
      body: { prompt: {} },
    });
    expect(crossSite.status).toBe(401);
    const fetchMeta = await hit(gw.url, '/object_info?edge-lb', { headers: { 'sec-fetch-site': 'cross-site' } });
    expect(fetchMeta.status).toBe(401);
    const rebinding = await hit(gw.url, '/object_info?edge-lb', { headers: { host: `evil.example:${port}` } });
    expect(rebinding.status).toBe(401);
    expect(await upgradeStatus(gw.url, '/ws?clientId=edge-lb', { headers: { origin: 'https://evil.example' } })).toBe(401);
    expect(reached(fake, 'edge-lb')).toBe(0);
    // the local user's own tab is same-origin and keeps working
    const own = await hit(gw.url, '/object_info?edge-lb', {
      headers: { origin: `http://127.0.0.1:${port}`, 'sec-fetch-site': 'same-origin' },
    });
    expect(own.status).toBe(200);
  });

  test('a non-loopback socket gets nothing from this setting', async () => {
    const lan = Object.values(os.networkInterfaces())
      .flat()
      .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
    expect(lan).toBeDefined(); // the test machine needs one non-loopback address
    // the same gateway, also listening on the LAN address
    const server = http.createServer(gw.composed.gateway.handle);
    await new Promise<void>((r) => server.listen(0, lan, () => r()));
    try {
      const port = (server.address() as { port: number }).port;
      const res = await hit(`http://${lan}:${port}`, '/object_info?edge-lb', { from: lan });
      expect(res.status).toBe(401);
      expect(reached(fake, 'edge-lb')).toBe(0);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});

describe('loopback_identity: a gateway user', () => {
  test('credential-less loopback requests act as that user; an unknown or disabled user admits nobody', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, allow_loopback_without_auth: true, loopback_identity: 'robot' });
    try {
      expect((await hit(gw.url, '/gateway/api/me')).status).toBe(401);
      const created = await hit(gw.url, '/gateway/api/users', {
        method: 'POST',
        headers: { 'x-api-key': TEST_KEY },
        body: { username: 'robot', password: 'robot-password-1', role: 'user' },
      });
      expect(created.status).toBe(201);
      const me = await hit(gw.url, '/gateway/api/me');
      expect(me.body).toMatchObject({ username: 'robot', role: 'user', source: 'loopback' });
      expect((await hit(gw.url, '/gateway/api/audit')).status).toBe(403); // a user, not an admin
      const disabled = await hit(gw.url, '/gateway/api/users/robot', {
        method: 'PATCH',
        headers: { 'x-api-key': TEST_KEY },
        body: { disabled: true },
      });
      expect(disabled.status).toBe(200);
      expect((await hit(gw.url, '/gateway/api/me')).status).toBe(401);
    } finally {
      await gw.close();
    }
  });
});

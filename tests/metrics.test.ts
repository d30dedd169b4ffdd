/** GET /metrics (Prometheus text): admin-only on the gateway's port, or a plain listener on 127.0.0.1:metrics.port. */
import net from 'node:net';
import request from 'supertest';
import { login, registerFirstAdmin, registerUser, PW } from './helpers/auth';
import { hit } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { useStack } from './helpers/stack';
import { openSocket } from './helpers/ws';

/** The value of one sample line (`name{labels} value`), or null when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | null {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return null;
}

describe('GET /metrics on the gateway port (admin-only)', () => {
  const stack = useStack();
  let admin: Awaited<ReturnType<typeof login>>;
  let bob: Awaited<ReturnType<typeof login>>;
  beforeAll(async () => {
    await registerFirstAdmin(stack.gw);
    await registerUser(stack.gw, 'bob');
    admin = await login(stack.gw, 'admin');
    bob = await login(stack.gw, 'bob');
  });

  test('refused without a credential (401), for a plain user (403) and through /api/metrics; never proxied', async () => {
    stack.fake.clearRequests();
    const anon = await request(stack.gw.url).get('/metrics');
    expect(anon.status).toBe(401);
    expect(anon.body.error.code).toBe('AUTH_REQUIRED');
    const user = await request(stack.gw.url).get('/metrics').set('Cookie', bob.cookie);
    expect(user.status).toBe(403);
    expect(user.body.error.code).toBe('FORBIDDEN');
    for (const p of ['/api/metrics', '//metrics', '/metrics/', '/METRICS']) {
      const r = await request(stack.gw.url).get(p).set('Cookie', bob.cookie);
      expect([401, 403, 404]).toContain(r.status);
      expect(r.text).not.toMatch(/comfyui_gateway_/);
    }
    expect(stack.fake.requests.filter((r) => /metrics/i.test(r.rawPath))).toEqual([]);
  });

  test('an admin (cookie or static key) reads Prometheus text: requests by family and status, refusals by code, upstream latency', async () => {
    await request(stack.gw.url).get('/object_info').set('X-API-Key', TEST_KEY).expect(200);
    await request(stack.gw.url).get('/object_info').expect(401);
    const r = await request(stack.gw.url).get('/metrics').set('Cookie', admin.cookie);
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = r.text;
    expect(sample(text, 'comfyui_gateway_http_requests_total', { owner: 'comfy', status: '200' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'comfyui_gateway_http_requests_total', { family: 'metrics', status: '403' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'comfyui_gateway_refusals_total', { code: 'AUTH_REQUIRED' })).toBeGreaterThanOrEqual(2);
    expect(sample(text, 'comfyui_gateway_refusals_total', { code: 'FORBIDDEN' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'comfyui_gateway_upstream_request_duration_seconds_count')).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'comfyui_gateway_process_resident_memory_bytes')).toBeGreaterThan(0);
    const key = await request(stack.gw.url).get('/metrics').set('X-API-Key', TEST_KEY);
    expect(key.status).toBe(200);
    // no secrets or user names in label values
    expect(text).not.toContain(TEST_KEY);
    expect(text).not.toMatch(/bob|admin"/);
  });

  test('logins (success and failure), lockouts and open WebSockets are counted', async () => {
    const before = (await request(stack.gw.url).get('/metrics').set('X-API-Key', TEST_KEY)).text;
    const ok0 = sample(before, 'comfyui_gateway_logins_total', { result: 'success' })!;
    const bad0 = sample(before, 'comfyui_gateway_logins_total', { result: 'failure' })!;
    expect(sample(before, 'comfyui_gateway_model_downloads_total', { result: 'started' })).toBe(0);
    await login(stack.gw, 'bob', PW);
    // from another loopback address, so the lockout does not hit the requests below
    for (let i = 0; i < 6; i++)
      await hit(stack.gw.url, '/login', { method: 'POST', from: '127.0.0.77', body: { username: 'bob', password: 'wrong-password-9' } });
    const s = await openSocket(stack.wsUrl('/ws?clientId=metrics-1'), { 'X-API-Key': TEST_KEY });
    try {
      const after = (await request(stack.gw.url).get('/metrics').set('X-API-Key', TEST_KEY)).text;
      expect(sample(after, 'comfyui_gateway_logins_total', { result: 'success' })).toBe(ok0 + 1);
      expect(sample(after, 'comfyui_gateway_logins_total', { result: 'failure' })!).toBeGreaterThanOrEqual(bad0 + 5);
      expect(sample(after, 'comfyui_gateway_lockouts_total')).toBeGreaterThanOrEqual(1);
      expect(sample(after, 'comfyui_gateway_refusals_total', { code: 'RATE_LIMITED' })).toBeGreaterThanOrEqual(1);
      expect(sample(after, 'comfyui_gateway_websockets_open')).toBe(1);
    } finally {
      s.close();
      await s.closed;
    }
    // the gauge follows the close
    let open = 1;
    for (let i = 0; i < 100 && open !== 0; i++) {
      open = sample((await request(stack.gw.url).get('/metrics').set('X-API-Key', TEST_KEY)).text, 'comfyui_gateway_websockets_open')!;
      if (open !== 0) await new Promise((r) => setTimeout(r, 50));
    }
    expect(open).toBe(0);
  });
});

describe('metrics.port: a plain listener on loopback; metrics.enabled: false removes the route', () => {
  let fake: FakeComfy;
  let gw: TestGateway;
  let port: number;
  beforeAll(async () => {
    fake = await startFakeComfy();
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    port = (probe.address() as net.AddressInfo).port;
    await new Promise((r) => probe.close(r));
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, metrics: { enabled: false, port } });
  });
  afterAll(async () => {
    await gw?.close();
    await fake.close();
  });

  test('the loopback port serves /metrics without credentials, only there, and closes with the gateway', async () => {
    const r = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(r.status).toBe(200);
    expect(await r.text()).toMatch(/comfyui_gateway_http_requests_total|comfyui_gateway_refusals_total/);
    expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${port}/metrics`, { method: 'POST' })).status).toBe(404);
    // it listens on 127.0.0.1 only
    const addr = await new Promise<string>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        resolve(s.remoteAddress!);
        s.destroy();
      });
    });
    expect(addr).toBe('127.0.0.1');
  });

  test('with metrics.enabled false, /metrics on the gateway port is 404 even for the static key, and not proxied', async () => {
    fake.clearRequests();
    const r = await request(gw.url).get('/metrics').set('X-API-Key', TEST_KEY);
    expect(r.status).toBe(404);
    expect(fake.requests).toEqual([]);
  });

  test('unknown metrics keys are refused with a suggestion', async () => {
    await expect(startGateway({ upstream: fake.url, metrics: { prot: 1 } })).rejects.toThrow(
      /unknown key "metrics.prot" \(did you mean "port"\?\)/,
    );
  });
});

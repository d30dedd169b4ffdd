import request from 'supertest';
import { FAKE_COMFY_ROUTES, startFakeComfy } from './helpers/fakeComfy';
import { flushedLogs, startGateway, TEST_KEY } from './helpers/gateway';
import { clientTraffic } from './helpers/traffic';
import { useStack } from './helpers/stack';

const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'] as const;

/** Paths the bypassable extensions exempted by suffix or prefix; every one needs a credential here. */
const SUFFIX_TRICKS = [
  '/api/userdata/x.json',
  '/anything.js',
  '/view?filename=a.png',
  '/extensions/core/x.js',
  '/extensions/ComfyUI-Manager/js/a.js',
  '/ws',
  '/api/ws',
  '/scripts/app.js',
  '/favicon.ico',
  '/index.html',
  '/',
  '/x.css',
  '/login.js',
  '/health.json',
  '/gateway/../prompt',
  '/api/prompt',
  '//api//prompt',
  '/%61pi/prompt',
  '/templates/x.json',
  '/assets/index.js',
  '/object_info',
  '/api/view.png',
];

function concrete(path: string): string {
  return path.replace(/\{[^}]+\}/g, 'x1');
}

describe('deny by default', () => {
  const stack = useStack();
  beforeEach(() => stack.fake.clearRequests());

  test('every ComfyUI route family, /x and /api/x, every method, without credentials → 401 and nothing reaches ComfyUI', async () => {
    const paths = new Set<string>();
    for (const r of FAKE_COMFY_ROUTES) {
      paths.add(concrete(r.path));
      paths.add('/api' + concrete(r.path));
    }
    for (const p of SUFFIX_TRICKS) paths.add(p);
    expect(paths.size).toBeGreaterThan(40);
    for (const p of paths) {
      for (const m of METHODS) {
        const res = await request(stack.gw.url)[m.toLowerCase() as 'get'](p).set('Accept', 'application/json');
        if (res.status !== 401) throw new Error(`${m} ${p} → ${res.status}`);
        expect(res.body.error.code).toBe('AUTH_REQUIRED');
      }
    }
    expect(clientTraffic(stack.fake)).toHaveLength(0);
  }, 120_000); // hundreds of requests: generous for a loaded machine

  test('browser navigations are sent to the login page with next=', async () => {
    const res = await request(stack.gw.url).get('/view?filename=a.png&api_key=').set('Accept', 'text/html');
    expect(res.status).toBe(302);
    expect(res.headers.location).toBe('/login?next=' + encodeURIComponent('/view?filename=a.png'));
    expect(clientTraffic(stack.fake)).toHaveLength(0);
  });

  test('public surface needs nothing: /health shows only status and upstream', async () => {
    const res = await request(stack.gw.url).get('/health');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok', upstream: 'up' });
    const login = await request(stack.gw.url).get('/login');
    expect(login.status).toBe(200);
    expect(clientTraffic(stack.fake)).toHaveLength(0);
  });

  test.each([
    ['Authorization: Bearer', (r: request.Test) => r.set('Authorization', `Bearer ${TEST_KEY}`)],
    ['X-API-Key', (r: request.Test) => r.set('X-API-Key', TEST_KEY)],
  ])('%s is accepted and never forwarded', async (_name, withKey) => {
    const res = await withKey(request(stack.gw.url).get('/api/object_info'));
    expect(res.status).toBe(200);
    const seen = stack.fake.requests.find((r) => r.rawPath.includes('object_info'))!;
    expect(seen).toBeDefined();
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers['x-api-key']).toBeUndefined();
    expect(JSON.stringify(seen.headers)).not.toContain(TEST_KEY);
  });

  test.each(['api_key', 'token'])('?%s= is accepted, stripped before proxying and redacted in logs', async (param) => {
    const res = await request(stack.gw.url).get(`/api/view?filename=none.png&${param}=${TEST_KEY}&type=output`);
    expect(res.status).toBe(404); // ComfyUI's own answer: the file does not exist
    const seen = stack.fake.requests.find((r) => r.rawPath.includes('/view'))!;
    expect(seen.rawPath).toBe('/api/view?filename=none.png&type=output');
    const logs = await flushedLogs(stack.gw);
    expect(JSON.stringify(logs)).not.toContain(TEST_KEY);
    expect(logs.some((l) => l.msg === 'request' && String(l.path).includes(`${param}=[redacted]`))).toBe(true);
  });

  test('a wrong key is 401 and never falls through to another credential', async () => {
    // Each case from its own gateway: five failures from one IP would (rightly) lock it out.
    const cases: ((url: string) => request.Test)[] = [
      (u) => request(u).get('/prompt').set('X-API-Key', 'wrong-key-0123456789abcdef'),
      (u) => request(u).get('/prompt').set('Authorization', 'Bearer wrong-key-0123456789abcdef'),
      (u) => request(u).get(`/prompt?api_key=${TEST_KEY}`).set('Authorization', 'Bearer wrong'),
      (u) => request(u).get(`/prompt?api_key=${TEST_KEY}`).set('X-API-Key', TEST_KEY.slice(0, -1)),
      (u) =>
        request(u)
          .get('/prompt')
          .set('Authorization', `Basic ${Buffer.from(`x:${TEST_KEY}`).toString('base64')}`),
      (u) => request(u).get(`/prompt?api_key=nope&token=${TEST_KEY}`),
      (u) => request(u).get(`/prompt?api_key=${TEST_KEY}&api_key=other`),
    ];
    const other = await startGateway({ upstream: stack.fake.url, api_key: TEST_KEY });
    try {
      for (const [i, c] of cases.entries()) {
        const res = await c(i < 4 ? stack.gw.url : other.url);
        expect(res.status).toBe(401);
        expect(res.body.error.code).toBe('INVALID_CREDENTIALS');
      }
    } finally {
      await other.close();
    }
    expect(clientTraffic(stack.fake)).toHaveLength(0);
  });

  test('client comfy-user, Sec-Fetch-Site and X-Forwarded-* are replaced; Origin made consistent for ComfyUI', async () => {
    const res = await request(stack.gw.url)
      .post('/api/prompt')
      .set('X-API-Key', TEST_KEY)
      .set('comfy-user', 'someone-else')
      .set('Sec-Fetch-Site', 'cross-site')
      .set('X-Forwarded-For', '6.6.6.6')
      .set('X-Forwarded-Host', 'evil.example')
      .set('Origin', stack.gw.url)
      .send({ prompt: { '1': { class_type: 'PreviewImage', inputs: {} } } });
    expect(res.status).toBe(200); // the fake's origin check (Host loopback, Origin differs → 403) passed
    const seen = stack.fake.requests.find((r) => r.method === 'POST' && r.rawPath === '/api/prompt')!;
    expect(seen.headers['comfy-user']).not.toBe('someone-else');
    expect(seen.headers['sec-fetch-site']).toBeUndefined();
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-forwarded-host']).toBe(new URL(stack.gw.url).host);
    expect(seen.headers.origin).toBe(stack.fake.url);
    expect(seen.headers.host).toBe(new URL(stack.fake.url).host);
  });

  test('one access line per request with method, path, status, duration and client IP', async () => {
    await request(stack.gw.url).get('/api/features').set('X-API-Key', TEST_KEY).expect(200);
    const logs = await flushedLogs(stack.gw);
    const line = logs.filter((l) => l.msg === 'request' && l.path === '/api/features').pop()!;
    expect(line).toMatchObject({ method: 'GET', status: 200, ip: '127.0.0.1', user: 'api-key' });
    expect(typeof line.ms).toBe('number');
  });
});

describe('no credential configured at all', () => {
  test('the gateway refuses proxied traffic and says how to set a key', async () => {
    const fake = await startFakeComfy();
    const gw = await startGateway({ upstream: fake.url });
    try {
      const res = await request(gw.url).get('/api/prompt');
      expect(res.status).toBe(401);
      expect(res.body.error.code).toBe('AUTH_REQUIRED');
      expect(gw.composed.notices.join('\n')).toMatch(/--api-key/);
      expect(clientTraffic(fake)).toHaveLength(0);
    } finally {
      await gw.close();
      await fake.close();
    }
  });
});

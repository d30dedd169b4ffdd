import request from 'supertest';
import { login, PW, adminAndUser } from './helpers/auth';
import { sampleWorkflow } from './helpers/fakeComfy';
import { startGateway, TEST_KEY } from './helpers/gateway';
import { openSocket } from './helpers/ws';
import { clientTraffic, isGatewayOwnCall } from './helpers/traffic';
import { requestsReached } from './helpers/queue';
import { useStack } from './helpers/stack';

const EVIL = 'http://evil.example';
const stack = useStack();
let alice: { token: string; cookie: string };
let admin: { token: string; cookie: string };

beforeAll(async () => {
  ({ user: alice, admin } = await adminAndUser(stack.gw, 'alice'));
});
// A test starts with ComfyUI's queue and the gateway's empty: a prompt of the previous test that the queue takes back
// for fairness and sends again later must not land in this test's record of what reached ComfyUI.
beforeEach(async () => {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const q = await request(stack.gw.url).get('/queue').set('X-API-Key', TEST_KEY);
    if (q.status === 200 && q.body.queue_running.length === 0 && q.body.queue_pending.length === 0) break;
    if (Date.now() > deadline) throw new Error(`the queue did not empty: ${JSON.stringify(q.body)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  stack.fake.clearRequests();
});

const expectCsrf = (res: request.Response) => {
  expect(res.status).toBe(403);
  expect(res.body.error.code).toBe('CSRF_REJECTED');
};
const promptBody = () => ({ prompt: sampleWorkflow('csrf'), client_id: 'csrf-client' });
const wsUrl = (p: string) => stack.gw.url.replace(/^http/, 'ws') + p;

test('cookie POST /gateway/api/tokens from a foreign Origin (or with no Origin at all) → 403, no token made', async () => {
  expectCsrf(await request(stack.gw.url).post('/gateway/api/tokens').set('Cookie', alice.cookie).set('Origin', EVIL).send({ name: 'x' }));
  expectCsrf(await request(stack.gw.url).post('/gateway/api/tokens').set('Cookie', alice.cookie).send({ name: 'x' }));
  expectCsrf(
    await request(stack.gw.url).post('/gateway/api/tokens').set('Cookie', alice.cookie).set('Referer', `${EVIL}/page`).send({ name: 'x' }),
  );
  expectCsrf(await request(stack.gw.url).post('/gateway/api/tokens').set('Cookie', alice.cookie).set('Origin', 'null').send({ name: 'x' }));
  expect(stack.gw.composed.users.tokens.list('alice')).toEqual([]);

  const same = await request(stack.gw.url)
    .post('/gateway/api/tokens')
    .set('Cookie', alice.cookie)
    .set('Origin', stack.gw.url)
    .send({ name: 'x' });
  expect(same.status).toBe(201);
  const byReferer = await request(stack.gw.url)
    .post('/gateway/api/tokens')
    .set('Cookie', alice.cookie)
    .set('Referer', `${stack.gw.url}/gateway/static/admin.html`)
    .send({ name: 'y' });
  expect(byReferer.status).toBe(201);
  // Reading stays possible without an Origin (GET is not a state change).
  expect((await request(stack.gw.url).get('/gateway/api/tokens').set('Cookie', alice.cookie)).body.tokens).toHaveLength(2);
  expect(clientTraffic(stack.fake)).toHaveLength(0);
});

test('cookie POST /prompt (proxied) from a foreign Origin → 403 and ComfyUI saw nothing; same origin goes through', async () => {
  expectCsrf(await request(stack.gw.url).post('/prompt').set('Cookie', alice.cookie).set('Origin', EVIL).send(promptBody()));
  expectCsrf(await request(stack.gw.url).post('/api/prompt').set('Cookie', alice.cookie).set('Origin', EVIL).send(promptBody()));
  expectCsrf(await request(stack.gw.url).post('/api/prompt').set('Cookie', alice.cookie).send(promptBody()));
  expect(clientTraffic(stack.fake)).toHaveLength(0);

  const ok = await request(stack.gw.url).post('/prompt').set('Cookie', alice.cookie).set('Origin', stack.gw.url).send(promptBody());
  expect(ok.status).toBe(200);
  expect(stack.fake.requests.filter((r) => r.method === 'POST' && /prompt/.test(r.rawPath))).toHaveLength(1);
});

test('header-authenticated scripts are not subject to the Origin rule', async () => {
  for (const [name, headers] of [
    ['bearer jwt', { Authorization: `Bearer ${alice.token}` }],
    ['static key', { 'X-API-Key': TEST_KEY }],
  ] as const) {
    stack.fake.clearRequests();
    const noOrigin = await request(stack.gw.url).post('/prompt').set(headers).send(promptBody());
    if (noOrigin.status !== 200) throw new Error(`${name} without Origin → ${noOrigin.status}`);
    const foreign = await request(stack.gw.url).post('/prompt').set(headers).set('Origin', EVIL).send(promptBody());
    if (foreign.status !== 200) throw new Error(`${name} with a foreign Origin → ${foreign.status}`);
    // the second may be held by the gateway's queue for a moment while the first runs
    await requestsReached(stack.fake, (r) => r.method === 'POST' && !isGatewayOwnCall(r), 2);
    expect(clientTraffic(stack.fake).filter((r) => r.method === 'POST')).toHaveLength(2);
  }
  const tok = await request(stack.gw.url)
    .post('/gateway/api/tokens')
    .set('Authorization', `Bearer ${alice.token}`)
    .send({ name: 'script' });
  expect(tok.status).toBe(201);
  expect((await request(stack.gw.url).delete(`/gateway/api/tokens/${tok.body.id}`).set('X-API-Key', tok.body.token)).status).toBe(204);
});

test('other cookie-authenticated state changes: admin API, password, register, logout', async () => {
  expectCsrf(
    await request(stack.gw.url).patch('/gateway/api/users/alice').set('Cookie', admin.cookie).set('Origin', EVIL).send({ role: 'admin' }),
  );
  expectCsrf(await request(stack.gw.url).delete('/gateway/api/users/alice').set('Cookie', admin.cookie).set('Origin', EVIL));
  expectCsrf(
    await request(stack.gw.url)
      .post('/gateway/api/users')
      .set('Cookie', admin.cookie)
      .set('Origin', EVIL)
      .send({ username: 'evil', password: PW }),
  );
  expectCsrf(
    await request(stack.gw.url)
      .post('/register')
      .set('Cookie', admin.cookie)
      .set('Origin', EVIL)
      .send({ new_user_username: 'evil2', new_user_password: PW }),
  );
  expectCsrf(
    await request(stack.gw.url)
      .post('/gateway/api/me/password')
      .set('Cookie', alice.cookie)
      .set('Origin', EVIL)
      .send({ current_password: PW, new_password: 'hijacked-pass-1' }),
  );
  expectCsrf(await request(stack.gw.url).post('/logout').set('Cookie', alice.cookie).set('Origin', EVIL));
  expect(stack.gw.composed.users.get('alice')).toMatchObject({ role: 'user' });
  expect(stack.gw.composed.users.get('evil')).toBeUndefined();
  expect(stack.gw.composed.users.get('evil2')).toBeUndefined();
  // Neither the password nor the session changed.
  expect((await request(stack.gw.url).get('/gateway/api/me').set('Cookie', alice.cookie)).status).toBe(200);
  await login(stack.gw, 'alice', PW);
  expect(clientTraffic(stack.fake)).toHaveLength(0);
});

test('cookie WebSocket upgrade to /ws from a foreign Origin (or none) is refused before ComfyUI; same origin connects', async () => {
  for (const p of ['/ws?clientId=csrf-ws', '/api/ws?clientId=csrf-ws']) {
    await expect(openSocket(wsUrl(p), { Cookie: alice.cookie, Origin: EVIL })).rejects.toMatchObject({ status: 403 });
    await expect(openSocket(wsUrl(p), { Cookie: alice.cookie })).rejects.toMatchObject({ status: 403 });
  }
  expect(stack.fake.requests.filter((r) => r.ws)).toHaveLength(0);
  expect(clientTraffic(stack.fake)).toHaveLength(0);

  const s = await openSocket(wsUrl('/ws?clientId=csrf-ws'), { Cookie: alice.cookie, Origin: stack.gw.url });
  try {
    await s.next((f) => f.json?.type === 'status');
    expect(stack.fake.requests.filter((r) => r.ws)).toHaveLength(1);
  } finally {
    s.close();
  }
  // A script with a header credential needs no Origin.
  const script = await openSocket(wsUrl('/ws?clientId=csrf-ws2'), { Authorization: `Bearer ${alice.token}` });
  script.close();
});

test('login CSRF: a foreign page cannot sign a browser in, register or log out; scripts without Origin can', async () => {
  const before = stack.gw.composed.users.count();
  expectCsrf(await request(stack.gw.url).post('/login').set('Origin', EVIL).send({ username: 'alice', password: PW }));
  expectCsrf(await request(stack.gw.url).post('/api/login').set('Origin', EVIL).type('form').send({ username: 'alice', password: PW }));
  expectCsrf(
    await request(stack.gw.url)
      .post('/register')
      .set('Origin', EVIL)
      .send({ new_user_username: 'mallory', new_user_password: PW, username: 'admin', password: PW }),
  );
  expectCsrf(await request(stack.gw.url).post('/logout').set('Origin', EVIL).set('Cookie', alice.cookie));
  expect(stack.gw.composed.users.count()).toBe(before);
  expect((await request(stack.gw.url).post('/login').send({ username: 'alice', password: PW })).status).toBe(200);
  expect((await request(stack.gw.url).post('/login').set('Origin', stack.gw.url).send({ username: 'alice', password: PW })).status).toBe(
    200,
  );
  // the session the foreign page tried to end is still alive
  expect((await request(stack.gw.url).get('/gateway/api/me').set('Cookie', alice.cookie)).status).toBe(200);
  expect(clientTraffic(stack.fake)).toHaveLength(0);
});

test('behind a trusted proxy that rewrites Host, the forwarded host is the origin; an untrusted client cannot claim one', async () => {
  const behind = await startGateway({ upstream: stack.fake.url, api_key: TEST_KEY, trusted_proxies: ['127.0.0.1'] });
  try {
    await request(behind.url).post('/gateway/api/users').set('X-API-Key', TEST_KEY).send({ username: 'pat', password: PW }).expect(201);
    const s = await login(behind, 'pat');
    const viaProxy = await request(behind.url)
      .post('/gateway/api/tokens')
      .set('Cookie', s.cookie)
      .set('Host', 'comfyui-internal:8189')
      .set('X-Forwarded-Host', 'comfy.example.org')
      .set('X-Forwarded-Proto', 'https')
      .set('Origin', 'https://comfy.example.org')
      .send({ name: 'via-proxy' });
    expect(viaProxy.status).toBe(201);
  } finally {
    await behind.close();
  }
  // Not a trusted proxy: X-Forwarded-Host is the client's word and changes nothing.
  expectCsrf(
    await request(stack.gw.url)
      .post('/gateway/api/tokens')
      .set('Cookie', alice.cookie)
      .set('X-Forwarded-Host', 'evil.example')
      .set('Origin', 'http://evil.example')
      .send({ name: 'x' }),
  );
});

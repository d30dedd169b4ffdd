import crypto from 'node:crypto';
import fs from 'node:fs';
import { fromFreshIps, login, logText, PW, registerFirstAdmin, registerUser, TRUST_LOCAL_PROXY } from './helpers/auth';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { clientTraffic } from './helpers/traffic';

let fake: FakeComfy;
let gw: TestGateway;
beforeAll(async () => {
  fake = await startFakeComfy();
  gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, max_access_token_expiration_hours: 720, ...TRUST_LOCAL_PROXY });
  await registerFirstAdmin(gw);
  await registerUser(gw, 'alice');
  await registerUser(gw, 'bob');
});
afterAll(async () => {
  await gw.close();
  await fake.close();
});
beforeEach(() => fake.clearRequests());

// Many requests here fail on purpose: each comes from its own client address so the limiter never locks us out.
const api = () => fromFreshIps(gw.url);
const asAlice = async () => `Bearer ${(await login(gw, 'alice')).token}`;

async function createToken(auth: string, body: object = { name: 'script' }) {
  const res = await api().post('/gateway/api/tokens').set('Authorization', auth).send(body);
  if (res.status !== 201) throw new Error(`token: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body as { id: string; name: string; token: string; prefix: string; created_at: string; expires_at: string };
}

/** The three ways a script may present a key or token; each must work and none may reach ComfyUI. */
const WAYS = {
  bearer: (t: string) => api().get('/queue').set('Authorization', `Bearer ${t}`),
  xApiKey: (t: string) => api().get('/queue').set('X-API-Key', t),
  query: (t: string) => api().get(`/queue?token=${encodeURIComponent(t)}`),
  apiKeyQuery: (t: string) => api().get(`/api/queue?api_key=${encodeURIComponent(t)}&x=1`),
};

test('POST creates a token shown once; GET lists it without secret or hash; the file keeps only its SHA-256', async () => {
  const auth = await asAlice();
  const before = Date.now();
  const t = await createToken(auth, { name: 'render bot', expires_in_hours: 48 });
  expect(t.token).toMatch(/^cgw_[A-Za-z0-9_-]{43}$/);
  expect(Buffer.from(t.token.slice(4), 'base64url')).toHaveLength(32);
  expect(t.prefix).toBe(t.token.slice(0, 12));
  expect(t.name).toBe('render bot');
  expect(Date.parse(t.expires_at) - Date.parse(t.created_at)).toBe(48 * 3600_000);
  expect(Date.parse(t.created_at)).toBeGreaterThanOrEqual(before - 5);

  const list = await api().get('/gateway/api/tokens').set('Authorization', auth);
  expect(list.status).toBe(200);
  const row = list.body.tokens.find((x: { id: string }) => x.id === t.id);
  expect(row).toEqual({
    id: t.id,
    name: 'render bot',
    prefix: t.prefix,
    created_at: t.created_at,
    expires_at: t.expires_at,
    last_used_at: null,
  });
  expect(JSON.stringify(list.body)).not.toContain(t.token);

  await gw.composed.users.flush();
  const file = fs.readFileSync(gw.config.paths.usersDb, 'utf8');
  expect(file).not.toContain(t.token);
  expect(file).toContain(crypto.createHash('sha256').update(t.token).digest('hex'));
  // Bob sees none of Alice's tokens.
  const bobs = await api()
    .get('/gateway/api/tokens')
    .set('Authorization', `Bearer ${(await login(gw, 'bob')).token}`);
  expect(bobs.body.tokens).toEqual([]);
});

test('expiry defaults to the maximum and may not exceed it; bad bodies are 400', async () => {
  const auth = await asAlice();
  const t = await createToken(auth, { name: 'default' });
  expect(Date.parse(t.expires_at) - Date.parse(t.created_at)).toBe(720 * 3600_000);
  for (const body of [
    { name: 'x', expires_in_hours: 721 },
    { name: 'x', expires_in_hours: 0 },
    { name: 'x', expires_in_hours: -1 },
    { name: 'x', expires_in_hours: 'soon' },
    { name: '' },
    { name: 'x'.repeat(65) },
    { expires_in_hours: 1 },
    { name: 'x', scope: 'all' },
  ]) {
    const res = await api().post('/gateway/api/tokens').set('Authorization', auth).send(body);
    if (res.status !== 400) throw new Error(`${JSON.stringify(body)} → ${res.status}`);
    expect(res.body.error.code).toBe('INVALID_BODY');
  }
});

test('a personal token and the static key each work via Bearer, X-API-Key and ?token=, and never reach ComfyUI', async () => {
  const t = await createToken(await asAlice());
  for (const [label, secret, who] of [
    ['personal token', t.token, 'alice'],
    ['static key', TEST_KEY, 'api-key'],
  ] as const) {
    for (const [way, send] of Object.entries(WAYS)) {
      fake.clearRequests();
      const res = await send(secret);
      if (res.status !== 200) throw new Error(`${label} via ${way} → ${res.status} ${res.text}`);
      expect(clientTraffic(fake)).toHaveLength(1);
      const seen = clientTraffic(fake)[0];
      expect(seen.headers.authorization).toBeUndefined();
      expect(seen.headers['x-api-key']).toBeUndefined();
      expect(seen.rawPath).not.toContain(secret);
      expect(seen.rawPath).not.toMatch(/token=|api_key=/);
    }
    const me = await api().get('/gateway/api/me').set('X-API-Key', secret);
    expect(me.body).toMatchObject({ username: who, source: who === 'api-key' ? 'api-key' : 'api-token' });
  }
  // last_used_at is recorded.
  const list = await api().get('/gateway/api/tokens').set('Authorization', `Bearer ${t.token}`);
  expect(Date.parse(list.body.tokens.find((x: { id: string }) => x.id === t.id).last_used_at)).toBeGreaterThan(0);
});

test('wrong, revoked and expired tokens are 401 and nothing reaches ComfyUI', async () => {
  const auth = await asAlice();
  const t = await createToken(auth);
  const short = await createToken(auth, { name: 'short', expires_in_hours: 1 / 3600 }); // one second
  const forged = 'cgw_' + crypto.randomBytes(32).toString('base64url');
  for (const secret of [forged, t.token.slice(0, -1) + (t.token.endsWith('A') ? 'B' : 'A'), 'cgw_short', TEST_KEY + 'x']) {
    for (const [way, send] of Object.entries(WAYS)) {
      const res = await send(secret);
      if (res.status !== 401) throw new Error(`${secret.slice(0, 8)} via ${way} → ${res.status}`);
      expect(res.body.error.code).toBe('INVALID_CREDENTIALS');
    }
  }
  expect((await WAYS.bearer(t.token)).status).toBe(200);
  fake.clearRequests();

  // Revocation is immediate.
  const del = await api().delete(`/gateway/api/tokens/${t.id}`).set('Authorization', auth);
  expect(del.status).toBe(204);
  for (const send of Object.values(WAYS)) expect((await send(t.token)).status).toBe(401);
  expect((await api().delete(`/gateway/api/tokens/${t.id}`).set('Authorization', auth)).status).toBe(404);

  // Expiry.
  expect((await WAYS.xApiKey(short.token)).status).toBe(200);
  fake.clearRequests();
  await new Promise((r) => setTimeout(r, 1100));
  expect((await WAYS.xApiKey(short.token)).status).toBe(401);
  expect(clientTraffic(fake)).toHaveLength(0);
});

test("someone else's token id is 404 and stays valid", async () => {
  const t = await createToken(await asAlice());
  const bob = `Bearer ${(await login(gw, 'bob')).token}`;
  const res = await api().delete(`/gateway/api/tokens/${t.id}`).set('Authorization', bob);
  expect(res.status).toBe(404);
  expect(res.body.error.code).toBe('NOT_FOUND');
  // Not even the static key (an admin, but not the owner) can delete it through the personal API.
  expect((await api().delete(`/gateway/api/tokens/${t.id}`).set('X-API-Key', TEST_KEY)).status).toBe(400);
  expect((await WAYS.bearer(t.token)).status).toBe(200);
});

test("disabling, password change or deletion of the owner voids the owner's tokens", async () => {
  await registerUser(gw, 'carl');
  const auth = `Bearer ${(await login(gw, 'carl')).token}`;
  const t1 = await createToken(auth);
  await gw.composed.users.update('carl', { disabled: true });
  expect((await WAYS.bearer(t1.token)).status).toBe(401);
  await gw.composed.users.update('carl', { disabled: false });
  expect((await WAYS.bearer(t1.token)).status).toBe(401);

  const auth2 = `Bearer ${(await login(gw, 'carl')).token}`;
  const t2 = await createToken(auth2);
  const changed = await api()
    .post('/gateway/api/me/password')
    .set('Authorization', auth2)
    .send({ current_password: PW, new_password: 'carl-new-pass-1' });
  expect(changed.status).toBe(200);
  expect((await WAYS.xApiKey(t2.token)).status).toBe(401);
  const auth3 = `Bearer ${changed.body.token}`;
  expect((await api().get('/gateway/api/tokens').set('Authorization', auth3)).body.tokens).toEqual([]);

  const t3 = await createToken(auth3);
  expect((await WAYS.query(t3.token)).status).toBe(200);
  await api().delete('/gateway/api/users/carl').set('X-API-Key', TEST_KEY).expect(204);
  expect((await WAYS.query(t3.token)).status).toBe(401);
  // A new user of the same name does not inherit them.
  await registerUser(gw, 'carl');
  expect((await WAYS.query(t3.token)).status).toBe(401);
});

test('token events are audited and no token value is logged', async () => {
  const auth = await asAlice();
  const t = await createToken(auth, { name: 'audited' });
  await WAYS.query(t.token);
  await WAYS.xApiKey(t.token);
  await api().delete(`/gateway/api/tokens/${t.id}`).set('Authorization', auth);
  const logs = await flushedLogs(gw);
  expect(logs.filter((l) => l.audit && l.event === 'token_create' && l.token_id === t.id)).toEqual([
    expect.objectContaining({ user: 'alice', prefix: t.prefix }),
  ]);
  expect(logs.filter((l) => l.audit && l.event === 'token_revoke' && l.token_id === t.id)).toHaveLength(1);
  const text = logText(logs);
  expect(text).not.toContain(t.token);
  expect(text).not.toContain(t.token.slice(12));
  expect(text).not.toContain(TEST_KEY);
});

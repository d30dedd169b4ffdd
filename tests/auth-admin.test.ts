import fs from 'node:fs';
import request from 'supertest';
import { login, logText, PW, registerFirstAdmin, registerUser } from './helpers/auth';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { clientTraffic } from './helpers/traffic';

let fake: FakeComfy;
let gw: TestGateway;
let admin: string;
beforeAll(async () => {
  fake = await startFakeComfy();
  gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
  await registerFirstAdmin(gw);
  admin = `Bearer ${(await login(gw, 'admin')).token}`;
});
afterAll(async () => {
  await gw.close();
  await fake.close();
});
beforeEach(() => fake.clearRequests());

const api = () => request(gw.url);

test('GET /gateway/api/users lists users without hashes; users and anonymous callers are refused', async () => {
  await registerUser(gw, 'alice');
  const res = await api().get('/gateway/api/users').set('Authorization', admin);
  expect(res.status).toBe(200);
  const alice = res.body.users.find((u: { username: string }) => u.username === 'alice');
  // tokens and last_sign_in feed the admin page's users table
  expect(alice).toEqual({
    id: expect.any(String),
    username: 'alice',
    email: null,
    role: 'user',
    disabled: false,
    permissions: [],
    created_at: expect.any(String),
    tokens: 0,
    last_sign_in: null,
  });
  expect(JSON.stringify(res.body)).not.toMatch(/\$2[aby]\$/);

  const user = `Bearer ${(await login(gw, 'alice')).token}`;
  for (const [m, p] of [
    ['get', '/gateway/api/users'],
    ['post', '/gateway/api/users'],
    ['patch', '/gateway/api/users/alice'],
    ['delete', '/gateway/api/users/admin'],
  ] as const) {
    const asUser = await api()[m](p).set('Authorization', user).send({ role: 'admin' });
    expect(asUser.status).toBe(403);
    expect(asUser.body.error.code).toBe('FORBIDDEN');
    const anon = await api()[m](p).set('Accept', 'application/json').send({ role: 'admin' });
    expect(anon.status).toBe(401);
  }
  expect(gw.composed.users.get('alice')!.role).toBe('user');
  expect(gw.composed.users.get('admin')).toBeDefined();
  expect(clientTraffic(fake)).toHaveLength(0);
});

test('POST /gateway/api/users creates users; validation, duplicates', async () => {
  const res = await api()
    .post('/gateway/api/users')
    .set('Authorization', admin)
    .send({ username: 'dl-user', password: PW, permissions: ['download_models'] });
  expect(res.status).toBe(201);
  expect(res.body).toMatchObject({ username: 'dl-user', role: 'user', disabled: false, permissions: ['download_models'] });
  const me = await api()
    .get('/gateway/api/me')
    .set('Authorization', `Bearer ${(await login(gw, 'dl-user')).token}`);
  expect(me.body).toMatchObject({ username: 'dl-user', role: 'user', permissions: ['download_models'], source: 'jwt' });

  const dup = await api().post('/gateway/api/users').set('Authorization', admin).send({ username: 'dl-user', password: PW });
  expect(dup.status).toBe(409);
  expect(dup.body.error.code).toBe('USER_EXISTS');
  for (const body of [
    { username: 'UPPER', password: PW },
    { username: 'ok-name', password: 'short' },
    { username: 'ok-name', password: PW, role: 'root' },
    { username: 'ok-name', password: PW, permissions: 'all' },
    { username: 'ok-name', password: PW, permissions: ['Bad Perm'] },
    { username: 'ok-name', password: PW, disabled: true },
  ]) {
    const r = await api().post('/gateway/api/users').set('Authorization', admin).send(body);
    if (r.status !== 400) throw new Error(`${JSON.stringify(body)} → ${r.status}`);
    expect(r.body.error.code).toBe('INVALID_BODY');
  }
  expect(gw.composed.users.get('ok-name')).toBeUndefined();
});

test('PATCH changes role, permissions, disabled and password, effective at once for live sessions', async () => {
  await registerUser(gw, 'bob');
  const bob = await login(gw, 'bob');
  const patch = (b: object, who = 'bob') => api().patch(`/gateway/api/users/${who}`).set('Authorization', admin).send(b);

  const promoted = await patch({ role: 'admin', permissions: ['download_models'] });
  expect(promoted.status).toBe(200);
  expect(promoted.body).toMatchObject({ username: 'bob', role: 'admin', permissions: ['download_models'] });
  expect((await api().get('/gateway/api/users').set('Cookie', bob.cookie)).status).toBe(200);
  await patch({ role: 'user' });
  expect((await api().get('/gateway/api/users').set('Cookie', bob.cookie)).status).toBe(403);

  const disabled = await patch({ disabled: true });
  expect(disabled.body.disabled).toBe(true);
  expect((await api().get('/gateway/api/me').set('Cookie', bob.cookie)).status).toBe(401);
  expect((await api().post('/login').send({ username: 'bob', password: PW })).status).toBe(401);
  await patch({ disabled: false });
  expect((await api().get('/gateway/api/me').set('Cookie', bob.cookie)).status).toBe(401); // still void
  const again = await login(gw, 'bob');

  const pw = await patch({ password: 'reset-by-admin-1' });
  expect(pw.status).toBe(200);
  expect(JSON.stringify(pw.body)).not.toContain('password_hash');
  expect((await api().get('/gateway/api/me').set('Cookie', again.cookie)).status).toBe(401);
  await login(gw, 'bob', 'reset-by-admin-1');

  for (const b of [{}, { role: 'god' }, { disabled: 'yes' }, { password: 'short' }, { username: 'renamed' }, { permissions: [1] }])
    expect((await patch(b)).status).toBe(400);
  const missing = await patch({ role: 'user' }, 'nobody');
  expect(missing.status).toBe(404);
  expect(missing.body.error.code).toBe('NOT_FOUND');
});

test('the last enabled admin cannot be removed, disabled or demoted (409 LAST_ADMIN)', async () => {
  const byKey = (r: request.Test) => r.set('X-API-Key', TEST_KEY);
  const admins = gw.composed.users
    .list()
    .filter((u) => u.role === 'admin' && !u.disabled)
    .map((u) => u.username);
  expect(admins).toEqual(['admin']);
  for (const r of [
    byKey(api().delete('/gateway/api/users/admin')),
    byKey(api().patch('/gateway/api/users/admin')).send({ disabled: true }),
    byKey(api().patch('/gateway/api/users/admin')).send({ role: 'user' }),
  ]) {
    const res = await r;
    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('LAST_ADMIN');
  }
  expect(gw.composed.users.get('admin')).toMatchObject({ role: 'admin', disabled: false });
  // With a second admin, the first may go.
  await registerUser(gw, 'admin2', { role: 'admin' });
  await byKey(api().patch('/gateway/api/users/admin')).send({ role: 'user' }).expect(200);
  const last = await byKey(api().delete('/gateway/api/users/admin2'));
  expect(last.status).toBe(409);
  await byKey(api().patch('/gateway/api/users/admin')).send({ role: 'admin' }).expect(200);
  admin = `Bearer ${(await login(gw, 'admin')).token}`;
});

test('DELETE removes the user, their sessions and tokens; 404 for unknown users', async () => {
  await registerUser(gw, 'dora');
  const dora = await login(gw, 'dora');
  const tok = await api().post('/gateway/api/tokens').set('Cookie', dora.cookie).set('Origin', gw.url).send({ name: 't' });
  expect(tok.status).toBe(201);
  const del = await api().delete('/gateway/api/users/dora').set('Authorization', admin);
  expect(del.status).toBe(204);
  expect((await api().get('/gateway/api/me').set('Cookie', dora.cookie)).status).toBe(401);
  expect((await api().get('/gateway/api/me').set('X-API-Key', tok.body.token)).status).toBe(401);
  expect((await api().delete('/gateway/api/users/dora').set('Authorization', admin)).status).toBe(404);
  await gw.composed.users.flush();
  const file = JSON.parse(fs.readFileSync(gw.config.paths.usersDb, 'utf8'));
  expect(file.users.map((u: { username: string }) => u.username)).not.toContain('dora');
  expect(file.tokens.filter((t: { username: string }) => t.username === 'dora')).toEqual([]);
});

test('GET /gateway/api/me works for the static key too', async () => {
  const res = await api().get('/gateway/api/me').set('Authorization', `Bearer ${TEST_KEY}`);
  expect(res.body).toEqual({ username: 'api-key', role: 'admin', permissions: [], source: 'api-key', expires_at: null });
});

test('100 parallel registrations are all persisted (memory, file, and after a restart)', async () => {
  const names = Array.from({ length: 100 }, (_, i) => `par-${i}`);
  const results = await Promise.all(
    names.map((n) =>
      api().post('/register').set('Authorization', `Bearer ${TEST_KEY}`).send({ new_user_username: n, new_user_password: PW }),
    ),
  );
  expect(results.map((r) => r.status)).toEqual(names.map(() => 201));
  await gw.composed.users.flush();
  const file = JSON.parse(fs.readFileSync(gw.config.paths.usersDb, 'utf8'));
  const stored = new Set(file.users.map((u: { username: string }) => u.username));
  for (const n of names) expect(stored.has(n)).toBe(true);
  const again = await startGateway(
    { upstream: fake.url },
    { files: { 'data/users_db.json': fs.readFileSync(gw.config.paths.usersDb, 'utf8') } },
  );
  try {
    expect(again.composed.users.list().filter((u) => u.username.startsWith('par-'))).toHaveLength(100);
    await login(again, 'par-57');
  } finally {
    await again.close();
  }
});

test('admin actions are audited without secrets', async () => {
  await api().post('/gateway/api/users').set('Authorization', admin).send({ username: 'audited', password: 'audited-pass-9' }).expect(201);
  await api()
    .patch('/gateway/api/users/audited')
    .set('Authorization', admin)
    .send({ password: 'audited-pass-10', role: 'admin' })
    .expect(200);
  await api().delete('/gateway/api/users/audited').set('Authorization', admin).expect(204);
  const logs = (await flushedLogs(gw)).filter((l) => l.audit && (l.new_user === 'audited' || l.target === 'audited'));
  // user_files: what became of the deleted account's folders (kept for admins by default)
  expect(logs.map((l) => l.event)).toEqual(['register', 'user_update', 'password_change', 'user_files', 'user_delete']);
  expect(logs[1]).toMatchObject({ user: 'admin', changes: ['password', 'role'] });
  const text = logText(await flushedLogs(gw));
  expect(text).not.toContain('audited-pass-9');
  expect(text).not.toContain('audited-pass-10');
});

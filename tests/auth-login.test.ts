import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import request from 'supertest';
import { fromFreshIps, login, logText, PW, registerFirstAdmin, registerUser, TRUST_LOCAL_PROXY } from './helpers/auth';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { clientTraffic } from './helpers/traffic';

const setupCode = (notices: string[]) => /setup code: ([A-Z0-9]{4}(?:-[A-Z0-9]{4}){3})/i.exec(notices.join('\n'))?.[1];
const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
const readUsers = (gw: TestGateway) => JSON.parse(fs.readFileSync(gw.config.paths.usersDb, 'utf8'));

let fake: FakeComfy;
beforeAll(async () => {
  fake = await startFakeComfy();
});
afterAll(async () => {
  await fake.close();
});

describe('first run', () => {
  let gw: TestGateway;
  beforeEach(async () => {
    gw = await startGateway({ upstream: fake.url });
  });
  afterEach(async () => {
    await gw.close();
  });

  test('a one-time setup code is announced; from the network the first admin needs it, and it dies with the first admin', async () => {
    const code = setupCode(gw.composed.notices);
    expect(code).toBeDefined();
    // X-Forwarded-For makes the request "not on this host", whatever the socket says (a local tunnel adds it).
    const remote = () => request(gw.url).post('/register').set('X-Forwarded-For', '203.0.113.9');
    const none = await remote().send({ new_user_username: 'boss', new_user_password: PW });
    expect(none.status).toBe(401);
    expect(none.body.error.code).toBe('AUTH_REQUIRED');
    expect(none.body.error.details.setup_required).toBe(true);
    const wrong = await remote().send({ new_user_username: 'boss', new_user_password: PW, setup_code: 'AAAA-BBBB-CCCC-DDDD' });
    expect(wrong.status).toBe(401);
    expect(wrong.body.error.code).toBe('INVALID_CREDENTIALS');
    expect(gw.composed.users.count()).toBe(0);

    const ok = await remote().send({ new_user_username: 'boss', new_user_password: PW, setup_code: code!.toLowerCase() });
    expect(ok.status).toBe(201);
    expect(ok.body).toEqual({ username: 'boss', role: 'admin' });

    const again = await remote().send({ new_user_username: 'mallory', new_user_password: PW, setup_code: code });
    expect(again.status).toBe(401);
    expect(again.body.error.code).toBe('AUTH_REQUIRED');
    // Not from this machine either, once an admin exists.
    const local = await request(gw.url).post('/register').send({ new_user_username: 'mallory', new_user_password: PW });
    expect(local.status).toBe(401);
    expect(gw.composed.users.list().map((u) => u.username)).toEqual(['boss']);
    const file = readUsers(gw);
    expect(file.version).toBe(1);
    expect(file.setup.first_admin).toBe('boss');
    expect(fs.statSync(gw.config.paths.usersDb).mode & 0o777).toBe(0o600);
  });

  test('from a direct loopback socket the first admin needs no code; the first user is admin whatever role is asked', async () => {
    const res = await request(gw.url).post('/register').send({ new_user_username: 'owner', new_user_password: PW, role: 'user' });
    expect(res.status).toBe(201);
    expect(res.body).toEqual({ username: 'owner', role: 'admin' });
    const events = (await flushedLogs(gw)).filter((l) => l.audit && l.event === 'register');
    expect(events).toEqual([expect.objectContaining({ user: 'owner', new_user: 'owner', via: 'loopback', ip: '127.0.0.1' })]);
  });

  test('two racing first-run registrations with the code produce exactly one admin', async () => {
    const code = setupCode(gw.composed.notices)!;
    const tries = await Promise.all(
      ['a1', 'a2', 'a3', 'a4'].map((n) =>
        request(gw.url)
          .post('/register')
          .set('X-Forwarded-For', '203.0.113.9')
          .send({ new_user_username: n, new_user_password: PW, setup_code: code }),
      ),
    );
    expect(tries.filter((r) => r.status === 201)).toHaveLength(1);
    for (const r of tries.filter((x) => x.status !== 201)) expect([401, 403]).toContain(r.status);
    expect(gw.composed.users.list().filter((u) => u.role === 'admin')).toHaveLength(1);
  });

  test('the setup code is not announced when an admin already exists', async () => {
    await registerFirstAdmin(gw);
    const again = await startGateway(
      { upstream: fake.url },
      { files: { 'data/users_db.json': fs.readFileSync(gw.config.paths.usersDb, 'utf8') } },
    );
    try {
      expect(setupCode(again.composed.notices)).toBeUndefined();
    } finally {
      await again.close();
    }
  });
});

describe('register, login, sessions', () => {
  let gw: TestGateway;
  const SECRET = 'an-env-provided-secret-of-plenty-of-bytes-0123456789';
  // Many requests here fail on purpose: each comes from its own client address so the limiter never locks us out.
  const api = () => fromFreshIps(gw.url);
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, ...TRUST_LOCAL_PROXY }, { env: { SECRET_KEY: SECRET } });
    await registerFirstAdmin(gw);
  });
  afterAll(async () => {
    await gw.close();
  });
  beforeEach(() => fake.clearRequests());

  test('POST /register: admin credentials in the body, role choice, validation, duplicates, non-admins', async () => {
    expect(await registerUser(gw, 'alice')).toEqual({ username: 'alice', role: 'user' });
    expect(await registerUser(gw, 'root2', { role: 'admin' })).toEqual({ username: 'root2', role: 'admin' });
    const post = (b: object) => api().post('/register').send(b);

    const dup = await post({ new_user_username: 'alice', new_user_password: PW, username: 'admin', password: PW });
    expect(dup.status).toBe(409);
    expect(dup.body.error.code).toBe('USER_EXISTS');

    const bad = await post({ new_user_username: 'Bad Name', new_user_password: 'short', username: 'admin', password: PW });
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe('INVALID_BODY');
    expect(Object.keys(bad.body.error.details.fields).sort()).toEqual(['new_user_password', 'new_user_username']);
    for (const pw of ['x'.repeat(73), 'é'.repeat(37), 'abcdefgh\u0000ijk'])
      expect((await post({ new_user_username: 'longpw', new_user_password: pw, username: 'admin', password: PW })).status).toBe(400);
    expect((await post({ new_user_username: 'okpw', new_user_password: 'x'.repeat(72), username: 'admin', password: PW })).status).toBe(
      201,
    );
    expect((await post({ new_user_username: 'api-key', new_user_password: PW, username: 'admin', password: PW })).status).toBe(400);

    const byUser = await post({ new_user_username: 'bob', new_user_password: PW, username: 'alice', password: PW });
    expect(byUser.status).toBe(403);
    expect(byUser.body.error.code).toBe('FORBIDDEN');
    const wrong = await post({ new_user_username: 'bob', new_user_password: PW, username: 'admin', password: 'nope-nope-nope' });
    expect(wrong.status).toBe(401);
    expect(wrong.body.error.code).toBe('INVALID_CREDENTIALS');
    const anon = await post({ new_user_username: 'bob', new_user_password: PW });
    expect(anon.status).toBe(401);
    expect(anon.body.error.code).toBe('AUTH_REQUIRED');
    // An unauthenticated caller cannot even learn whether a name is taken.
    expect((await post({ new_user_username: 'alice', new_user_password: PW })).status).toBe(401);

    // An admin principal (static key via Bearer, or an admin session cookie from the same origin) works too.
    const byKey = await api()
      .post('/register')
      .set('Authorization', `Bearer ${TEST_KEY}`)
      .send({ new_user_username: 'bykey', new_user_password: PW });
    expect(byKey.status).toBe(201);
    const { cookie } = await login(gw, 'admin');
    const byCookie = await api()
      .post('/register')
      .set('Cookie', cookie)
      .set('Origin', gw.url)
      .send({ new_user_username: 'bycookie', new_user_password: PW, role: 'admin' });
    expect(byCookie.body).toEqual({ username: 'bycookie', role: 'admin' });
    const aliceSession = await login(gw, 'alice');
    const byUserCookie = await api()
      .post('/register')
      .set('Cookie', aliceSession.cookie)
      .set('Origin', gw.url)
      .send({ new_user_username: 'bob', new_user_password: PW });
    expect(byUserCookie.status).toBe(403);
    expect(gw.composed.users.get('bob')).toBeUndefined();
    expect(clientTraffic(fake)).toHaveLength(0);
  });

  test('POST /login: token, expiry and an HttpOnly SameSite=Lax cookie; JSON and form bodies', async () => {
    await registerUser(gw, 'carol');
    const before = Math.floor(Date.now() / 1000);
    const res = await api().post('/login').send({ username: 'carol', password: PW });
    expect(res.status).toBe(200);
    expect(res.body.user).toEqual({ username: 'carol', role: 'user' });
    const claims = jwt.verify(res.body.token, SECRET, { algorithms: ['HS256'] }) as jwt.JwtPayload;
    expect(claims).toMatchObject({ sub: 'carol', role: 'user' });
    expect(typeof claims.jti).toBe('string');
    expect(claims.exp! - claims.iat!).toBe(12 * 3600);
    expect(Math.abs(claims.iat! - before)).toBeLessThanOrEqual(2);
    expect(Date.parse(res.body.expires_at)).toBe(claims.exp! * 1000);
    const cookie = ([] as string[]).concat(res.headers['set-cookie'])[0];
    const attrs = cookie.split(/;\s*/);
    expect(attrs[0]).toBe(`jwt_token=${res.body.token}`);
    expect(attrs).toEqual(expect.arrayContaining(['HttpOnly', 'SameSite=Lax', 'Path=/']));
    expect(attrs.find((a) => a.startsWith('Max-Age='))).toMatch(/^Max-Age=(43200|43199)$/);
    expect(attrs).not.toContain('Secure');

    const form = await api().post('/login').type('form').send({ username: 'carol', password: PW });
    expect(form.status).toBe(200);
    expect(typeof form.body.token).toBe('string');
    // A script-less browser form is redirected to a same-site `next` only.
    const nav = await api()
      .post('/login')
      .type('form')
      .set('Accept', 'text/html')
      .send({ username: 'carol', password: PW, next: '//evil.example/x' });
    expect(nav.status).toBe(303);
    expect(nav.headers.location).toBe('/');
    const nav2 = await api()
      .post('/login')
      .type('form')
      .set('Accept', 'text/html')
      .send({ username: 'carol', password: PW, next: '/queue' });
    expect(nav2.headers.location).toBe('/queue');
    const badForm = await api().post('/login').type('form').set('Accept', 'text/html').send({ username: 'carol', password: 'wrong-wrong' });
    expect(badForm.status).toBe(303);
    expect(badForm.headers.location).toMatch(/^\/login\?error=/);
    expect(badForm.headers['set-cookie']).toBeUndefined();

    const malformed = await api().post('/login').set('Content-Type', 'application/json').send('{"username": "carol",');
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.code).toBe('INVALID_BODY');
    const missing = await api().post('/login').send({ username: 'carol' });
    expect(missing.status).toBe(400);
    const typed = await api()
      .post('/login')
      .send({ username: 'carol', password: { $ne: 1 } });
    expect(typed.status).toBe(400);
    expect(clientTraffic(fake)).toHaveLength(0);
  });

  test('unknown user, wrong password and disabled user: the same 401, no cookie', async () => {
    await registerUser(gw, 'dave');
    await gw.composed.users.update('dave', { disabled: true });
    await registerUser(gw, 'erin');
    const answers = await Promise.all(
      [
        { username: 'nobody', password: PW },
        { username: 'erin', password: 'wrong-password' },
        { username: 'dave', password: PW },
        { username: 'erin', password: PW + '\u0000tail' },
      ].map((b) => api().post('/login').send(b)),
    );
    for (const a of answers) {
      expect(a.status).toBe(401);
      expect(a.body).toEqual({ error: { code: 'INVALID_CREDENTIALS', message: 'Invalid credentials', details: {} } });
      expect(a.headers['set-cookie']).toBeUndefined();
    }
    const fails = (await flushedLogs(gw)).filter((l) => l.audit && l.event === 'login_failure');
    expect(fails.map((f) => f.username)).toEqual(expect.arrayContaining(['nobody', 'erin', 'dave']));
    // The client address is the one client-IP function's answer (a trusted proxy's X-Forwarded-For here).
    for (const f of fails) expect(f).toMatchObject({ ip: expect.stringMatching(/^198\.18\./), user_agent: expect.any(String) });
  });

  test('the session works as cookie, Bearer and ?token=; its role and permissions come from the store, not the claim', async () => {
    await registerUser(gw, 'frank', { role: 'admin' });
    const s = await login(gw, 'frank');
    const me = (r: request.Test) => r.then((x) => x);
    expect((await me(api().get('/gateway/api/me').set('Cookie', s.cookie))).body).toMatchObject({
      username: 'frank',
      role: 'admin',
      source: 'cookie',
    });
    expect((await me(api().get('/gateway/api/me').set('Authorization', `Bearer ${s.token}`))).body).toMatchObject({
      username: 'frank',
      source: 'jwt',
    });
    expect((await me(api().get(`/gateway/api/me?token=${s.token}`))).body).toMatchObject({ username: 'frank', source: 'query' });
    expect((await api().get('/gateway/api/users').set('Authorization', `Bearer ${s.token}`)).status).toBe(200);

    // Demoted: the token still says admin, the gateway does not believe it.
    await gw.composed.users.update('frank', { role: 'user', permissions: ['download_models'] });
    const after = await api().get('/gateway/api/me').set('Authorization', `Bearer ${s.token}`);
    expect(after.body).toMatchObject({ role: 'user', permissions: ['download_models'] });
    const admin = await api().get('/gateway/api/users').set('Authorization', `Bearer ${s.token}`);
    expect(admin.status).toBe(403);
    expect(admin.body.error.code).toBe('FORBIDDEN');
  });

  test('forged, foreign, expired and alg-swapped tokens are 401 and never reach ComfyUI', async () => {
    await registerUser(gw, 'gina');
    const s = await login(gw, 'gina');
    const claims = jwt.decode(s.token) as jwt.JwtPayload;
    const now = Math.floor(Date.now() / 1000);
    const body = { sub: 'gina', role: 'admin', jti: 'forged-1', iat: now, exp: now + 3600, iat_ms: now * 1000 };
    const bad: Record<string, string> = {
      none: `${b64({ alg: 'none', typ: 'JWT' })}.${b64(body)}.`,
      noneWithSig: `${b64({ alg: 'none', typ: 'JWT' })}.${b64(body)}.${s.token.split('.')[2]}`,
      otherSecret: jwt.sign(body, 'some-other-secret-of-enough-length-123456', { algorithm: 'HS256' }),
      hs384: jwt.sign(body, SECRET, { algorithm: 'HS384' }),
      hs512: jwt.sign(body, SECRET, { algorithm: 'HS512' }),
      expired: jwt.sign({ ...body, iat: now - 7200, exp: now - 60, iat_ms: (now - 7200) * 1000 }, SECRET, { algorithm: 'HS256' }),
      tampered: `${s.token.split('.')[0]}.${b64({ ...claims, role: 'admin', sub: 'admin' })}.${s.token.split('.')[2]}`,
      unknownUser: jwt.sign({ ...body, sub: 'ghost' }, SECRET, { algorithm: 'HS256' }),
      noSub: jwt.sign({ role: 'admin', jti: 'x', iat: now, exp: now + 60 }, SECRET, { algorithm: 'HS256' }),
      garbage: 'not.a.jwt',
    };
    for (const [name, token] of Object.entries(bad)) {
      for (const how of ['bearer', 'cookie', 'query'] as const) {
        let r = api()
          .get(how === 'query' ? `/queue?token=${encodeURIComponent(token)}` : '/queue')
          .set('Accept', 'application/json');
        if (how === 'bearer') r = r.set('Authorization', `Bearer ${token}`);
        if (how === 'cookie') r = r.set('Cookie', `jwt_token=${token}`);
        const res = await r;
        if (res.status !== 401) throw new Error(`${name} via ${how} → ${res.status}`);
        expect(res.body.error.code).toBe('INVALID_CREDENTIALS');
      }
    }
    // The genuine token, and a token we sign with the env secret ourselves, are accepted: the env secret is the key.
    expect((await api().get('/queue').set('Authorization', `Bearer ${s.token}`)).status).toBe(200);
    const ours = jwt.sign(
      { ...body, sub: 'gina', role: 'user', jti: 'ours-1', iat_ms: Date.now(), iat: Math.floor(Date.now() / 1000) },
      SECRET,
      { algorithm: 'HS256' },
    );
    expect((await api().get('/gateway/api/me').set('Authorization', `Bearer ${ours}`)).status).toBe(200);
    expect(clientTraffic(fake).map((r) => r.rawPath)).toEqual(['/queue']);
    expect(clientTraffic(fake)[0].headers.authorization).toBeUndefined();
  });

  test('logout revokes the jti (persisted), clears the cookie; a copied token stops working at once', async () => {
    await registerUser(gw, 'hank');
    const a = await login(gw, 'hank');
    const b = await login(gw, 'hank');
    const out = await api().post('/logout').set('Authorization', `Bearer ${a.token}`);
    expect(out.status).toBe(200);
    expect(out.body).toEqual({ logged_out: true });
    const cleared = ([] as string[]).concat(out.headers['set-cookie'])[0];
    expect(cleared).toMatch(/^jwt_token=;/);
    expect(cleared).toMatch(/Max-Age=0/);
    expect(cleared).toMatch(/HttpOnly/);
    for (const r of [
      api().get('/gateway/api/me').set('Authorization', `Bearer ${a.token}`),
      api().get('/gateway/api/me').set('Cookie', `jwt_token=${a.token}`),
      api().get(`/gateway/api/me?token=${a.token}`),
    ]) {
      const res = await r;
      expect(res.status).toBe(401);
      expect(res.body.error.code).toBe('TOKEN_REVOKED');
    }
    const { jti, exp } = jwt.decode(a.token) as jwt.JwtPayload;
    await gw.composed.users.flush();
    expect(readUsers(gw).revoked).toEqual(expect.arrayContaining([{ jti, exp }]));
    // The other session is untouched.
    expect((await api().get('/gateway/api/me').set('Cookie', b.cookie)).status).toBe(200);

    // A browser's GET /logout: redirect to the sign-in page and the cookie's token is dead.
    const nav = await api().get('/logout').set('Cookie', b.cookie).set('Accept', 'text/html');
    expect(nav.status).toBe(302);
    expect(nav.headers.location).toBe('/login?signed_out=1');
    expect(([] as string[]).concat(nav.headers['set-cookie'])[0]).toMatch(/^jwt_token=;.*Max-Age=0/);
    expect((await api().get('/gateway/api/me').set('Cookie', b.cookie)).status).toBe(401);
    // Logging out without a session is harmless.
    expect((await api().post('/logout')).body).toEqual({ logged_out: true });
    const events = (await flushedLogs(gw)).filter((l) => l.audit && l.event === 'logout' && l.user === 'hank');
    expect(events).toHaveLength(2);
    expect(clientTraffic(fake)).toHaveLength(0); // free_memory_on_logout is off
  });

  test('password change and disabling void every earlier session; a session issued right after still works', async () => {
    await registerUser(gw, 'ivy');
    const old = await login(gw, 'ivy');
    const change = await api()
      .post('/gateway/api/me/password')
      .set('Authorization', `Bearer ${old.token}`)
      .send({ current_password: PW, new_password: 'a-new-password-2' });
    expect(change.status).toBe(200);
    expect(change.body.password_changed).toBe(true);
    const oldRes = await api().get('/gateway/api/me').set('Authorization', `Bearer ${old.token}`);
    expect(oldRes.status).toBe(401);
    expect(oldRes.body.error.code).toBe('TOKEN_REVOKED');
    // Issued within the same second as the change, after it: valid.
    expect((await api().get('/gateway/api/me').set('Authorization', `Bearer ${change.body.token}`)).status).toBe(200);
    const fresh = await login(gw, 'ivy', 'a-new-password-2');
    expect((await api().get('/gateway/api/me').set('Cookie', fresh.cookie)).status).toBe(200);
    expect((await api().post('/login').send({ username: 'ivy', password: PW })).status).toBe(401);

    const wrong = await api()
      .post('/gateway/api/me/password')
      .set('Cookie', fresh.cookie)
      .set('Origin', gw.url)
      .send({ current_password: 'nope-nope-1', new_password: 'whatever-123' });
    expect(wrong.status).toBe(401);
    expect(wrong.body.error.code).toBe('INVALID_CREDENTIALS');
    const weak = await api()
      .post('/gateway/api/me/password')
      .set('Cookie', fresh.cookie)
      .set('Origin', gw.url)
      .send({ current_password: 'a-new-password-2', new_password: 'short' });
    expect(weak.status).toBe(400);
    // A cookie session changing its password gets a fresh cookie.
    const viaCookie = await api()
      .post('/gateway/api/me/password')
      .set('Cookie', fresh.cookie)
      .set('Origin', gw.url)
      .send({ current_password: 'a-new-password-2', new_password: 'third-password-3' });
    expect(viaCookie.status).toBe(200);
    const newCookie = ([] as string[]).concat(viaCookie.headers['set-cookie'])[0].split(';')[0];
    expect((await api().get('/gateway/api/me').set('Cookie', fresh.cookie)).status).toBe(401);
    expect((await api().get('/gateway/api/me').set('Cookie', newCookie)).status).toBe(200);

    const keyChange = await api()
      .post('/gateway/api/me/password')
      .set('X-API-Key', TEST_KEY)
      .send({ current_password: 'x', new_password: 'whatever-123' });
    expect(keyChange.status).toBe(400);

    await gw.composed.users.update('ivy', { disabled: true });
    const disabled = await api().get('/gateway/api/me').set('Cookie', newCookie);
    expect(disabled.status).toBe(401);
    await gw.composed.users.update('ivy', { disabled: false });
    expect((await api().get('/gateway/api/me').set('Cookie', newCookie)).status).toBe(401);
    const events = (await flushedLogs(gw)).filter((l) => l.audit && l.event === 'password_change' && l.user === 'ivy');
    expect(events).toHaveLength(2);
  });

  test('login and register pages are served (HTML, strict CSP)', async () => {
    for (const p of ['/login', '/register']) {
      const res = await api().get(p).set('Accept', 'text/html');
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toMatch(/text\/html/);
      expect(res.headers['content-security-policy']).toMatch(/script-src 'self'/);
      expect(res.text).toMatch(/<form/i);
    }
  });

  test('no password, hash, token or cookie value ever reaches the log', async () => {
    await registerUser(gw, 'jack', { password: 'jack-secret-pass-77' });
    const s = await login(gw, 'jack', 'jack-secret-pass-77');
    await api().post('/login').send({ username: 'jack', password: 'jack-wrong-pass-88' });
    await api().get(`/queue?token=${s.token}`);
    await api().get('/queue').set('Cookie', s.cookie);
    await api().post('/logout').set('Cookie', s.cookie).set('Origin', gw.url);
    const text = logText(await flushedLogs(gw));
    const hash = gw.composed.users.get('jack')!.password_hash;
    for (const secret of ['jack-secret-pass-77', 'jack-wrong-pass-88', PW, hash, s.token, s.token.split('.')[2], TEST_KEY, SECRET])
      expect(text).not.toContain(secret);
    expect(text).toContain('login_success');
  });
});

test('free_memory_on_logout asks ComfyUI to free memory when a session ends', async () => {
  const gw = await startGateway({ upstream: fake.url, free_memory_on_logout: true });
  try {
    await registerFirstAdmin(gw);
    const s = await login(gw, 'admin');
    fake.clearRequests();
    await request(gw.url).post('/logout').set('Authorization', `Bearer ${s.token}`).expect(200);
    const frees = () => fake.requests.filter((r) => r.rawPath === '/free');
    for (let i = 0; i < 250 && !frees().length; i++) await new Promise((r) => setTimeout(r, 20));
    // ComfyUI user provisioning (POST /users) may still be finishing from the login; nothing else may be sent
    expect(clientTraffic(fake).map((r) => `${r.method} ${r.rawPath}`)).toEqual(['POST /free']);
    expect(frees()[0].headers.authorization).toBeUndefined();
  } finally {
    await gw.close();
  }
});

describe('secret and cookie security', () => {
  test('without SECRET_KEY a secret is generated once (0600) and restarts keep sessions', async () => {
    const gw = await startGateway({ upstream: fake.url });
    let token: string;
    let files: Record<string, string>;
    try {
      await registerFirstAdmin(gw);
      token = (await login(gw, 'admin')).token;
      await gw.composed.users.flush();
      const secretFile = path.join(gw.config.paths.dataDir, 'jwt_secret');
      expect(fs.statSync(secretFile).mode & 0o777).toBe(0o600);
      expect(fs.readFileSync(secretFile, 'utf8').trim().length).toBeGreaterThanOrEqual(64);
      files = {
        'data/users_db.json': fs.readFileSync(gw.config.paths.usersDb, 'utf8'),
        'data/jwt_secret': fs.readFileSync(secretFile, 'utf8'),
      };
    } finally {
      await gw.close();
    }
    const again = await startGateway({ upstream: fake.url }, { files });
    try {
      expect((await request(again.url).get('/gateway/api/me').set('Authorization', `Bearer ${token}`)).body.username).toBe('admin');
    } finally {
      await again.close();
    }
    // A different secret (fresh data dir) does not accept it.
    const other = await startGateway({ upstream: fake.url }, { files: { 'data/users_db.json': files['data/users_db.json'] } });
    try {
      expect((await request(other.url).get('/gateway/api/me').set('Authorization', `Bearer ${token}`)).status).toBe(401);
    } finally {
      await other.close();
    }
  });

  test('the cookie is Secure under TLS and with force_https', async () => {
    const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'cgw-tls-'));
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-keyout',
        path.join(dir, 'key.pem'),
        '-out',
        path.join(dir, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    );
    const tls = await startGateway(
      { upstream: fake.url, tls: { cert: 'cert.pem', key: 'key.pem' } },
      {
        files: {
          'cert.pem': fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'),
          'key.pem': fs.readFileSync(path.join(dir, 'key.pem'), 'utf8'),
        },
      },
    );
    fs.rmSync(dir, { recursive: true, force: true });
    try {
      expect(tls.url).toMatch(/^https:/);
      await request(tls.url).post('/register').disableTLSCerts().send({ new_user_username: 'admin', new_user_password: PW }).expect(201);
      const res = await request(tls.url).post('/login').disableTLSCerts().send({ username: 'admin', password: PW });
      expect(([] as string[]).concat(res.headers['set-cookie'])[0].split(/;\s*/)).toContain('Secure');
    } finally {
      await tls.close();
    }
    // Behind a trusted TLS-terminating proxy (X-Forwarded-Proto: https), with and without force_https.
    for (const force_https of [false, true]) {
      const proxied = await startGateway({ upstream: fake.url, force_https, ...TRUST_LOCAL_PROXY });
      try {
        await request(proxied.url)
          .post('/register')
          .set('X-Forwarded-Proto', 'https')
          .set('X-Forwarded-For', '10.1.1.1')
          .send({ new_user_username: 'admin', new_user_password: PW, setup_code: setupCode(proxied.composed.notices) })
          .expect(201);
        const res = await request(proxied.url)
          .post('/login')
          .set('X-Forwarded-Proto', 'https')
          .set('X-Forwarded-For', '10.1.1.1')
          .send({ username: 'admin', password: PW });
        expect(res.status).toBe(200);
        expect(([] as string[]).concat(res.headers['set-cookie'])[0].split(/;\s*/)).toContain('Secure');
        // Plain HTTP: with force_https the gateway redirects before any route; without it, no Secure flag.
        const plain = await request(proxied.url).post('/login').send({ username: 'admin', password: PW });
        if (force_https) expect(plain.status).toBe(308);
        else expect(([] as string[]).concat(plain.headers['set-cookie'])[0].split(/;\s*/)).not.toContain('Secure');
      } finally {
        await proxied.close();
      }
    }
  });

  test('unknown user and wrong password take about the same time (dummy hash of the same cost)', async () => {
    const gw = await startGateway({ upstream: fake.url, bcrypt_cost: 9, ...TRUST_LOCAL_PROXY });
    try {
      await registerFirstAdmin(gw);
      for (let i = 0; i < 6; i++) await registerUser(gw, `user${i}`);
      await fromFreshIps(gw.url).post('/login').send({ username: 'nobody', password: PW }); // warm up
      const time = async (b: object) => {
        const t = process.hrtime.bigint();
        const res = await fromFreshIps(gw.url).post('/login').send(b);
        expect(res.status).toBe(401); // not a quick 429 from the limiter
        return Number(process.hrtime.bigint() - t) / 1e6;
      };
      const unknown: number[] = [];
      const wrong: number[] = [];
      for (let i = 0; i < 6; i++) {
        unknown.push(await time({ username: `nobody${i}`, password: PW }));
        wrong.push(await time({ username: `user${i}`, password: `wrong-${i}-password` }));
      }
      const median = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1];
      const ratio = median(unknown) / median(wrong);
      expect(ratio).toBeGreaterThan(0.5);
      expect(ratio).toBeLessThan(2);
      // And both cost a bcrypt comparison (cost 9 is tens of milliseconds, a map lookup is not).
      expect(median(unknown)).toBeGreaterThan(5);
    } finally {
      await gw.close();
    }
  });
});

test('setup codes are random and easy to type', () => {
  const { generateSetupCode } = require('../gateway/users/setup') as typeof import('../gateway/users/setup');
  const codes = new Set(Array.from({ length: 50 }, () => generateSetupCode()));
  expect(codes.size).toBe(50);
  for (const c of codes) expect(c).toMatch(/^[A-Z2-9]{4}(-[A-Z2-9]{4}){3}$/);
});

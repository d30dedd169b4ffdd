/**
 * Attacks on identity and the edge (security review): each test is an attack that worked before its fix.
 * Real gateway, real sockets (localAddress 127.0.0.x for "other machines"), real files.
 */
import fs from 'node:fs';
import http from 'node:http';
import bcrypt from 'bcrypt';
import { login, logText, PW, registerFirstAdmin, registerUser, TRUST_LOCAL_PROXY } from './helpers/auth';
import { hit, reached, waitFor } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

const KEY = { 'x-api-key': TEST_KEY };
const setupCode = (notices: string[]) => /setup code: ([A-Z0-9]{4}(?:-[A-Z0-9]{4}){3})/i.exec(notices.join('\n'))?.[1];

let fake: FakeComfy;
beforeAll(async () => {
  fake = await startFakeComfy();
});
afterAll(() => fake.close());
beforeEach(() => fake.clearRequests());

/**
 * A POST whose headers (and one byte of body) go out now and whose body is finished later: the request is
 * admitted by the front door at once, its handler runs only when `finish()` is called.
 */
function slowPost(base: string, path: string, headers: Record<string, string>, body: unknown) {
  const u = new URL(base);
  const text = JSON.stringify(body);
  let settle!: (v: { status: number; body: any }) => void;
  const done = new Promise<{ status: number; body: any }>((r) => (settle = r));
  const req = http.request(
    {
      host: u.hostname,
      port: u.port,
      path,
      method: 'POST',
      agent: false,
      headers: {
        'content-type': 'application/json',
        accept: 'application/json',
        'content-length': String(Buffer.byteLength(text)),
        ...headers,
      },
    },
    (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const t = Buffer.concat(chunks).toString('utf8');
        settle({ status: res.statusCode ?? 0, body: t ? JSON.parse(t) : null });
      });
    },
  );
  req.on('error', () => undefined);
  req.write(text.slice(0, 1));
  return {
    finish: () => {
      req.end(text.slice(1));
      return done;
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('first run: nobody on the network becomes admin without the setup code', () => {
  test('DNS rebinding: a page of another name resolving to 127.0.0.1 (its own Host and Origin) cannot register the first admin', async () => {
    const gw = await startGateway({ upstream: fake.url });
    try {
      const evil = `evil.example:${gw.port}`;
      const res = await hit(gw.url, '/register', {
        method: 'POST',
        headers: { host: evil, origin: `http://${evil}`, 'sec-fetch-site': 'same-origin' },
        body: { new_user_username: 'mallory', new_user_password: 'mallory-password-1' },
      });
      expect([res.status, res.body.error.code, res.body.error.details.setup_required]).toEqual([401, 'AUTH_REQUIRED', true]);
      expect(gw.composed.users.count()).toBe(0);
      // The owner on this machine still needs no code.
      const own = await hit(gw.url, '/register', {
        method: 'POST',
        headers: { host: `localhost:${gw.port}` },
        body: { new_user_username: 'owner', new_user_password: PW },
      });
      expect([own.status, own.body.role]).toEqual([201, 'admin']);
    } finally {
      await gw.close();
    }
  });

  test('a proxy on loopback listed in trusted_proxies is not "this machine", even when it forwards without any forwarding header', async () => {
    // e.g. nginx with a bare proxy_pass, or a proxy whose X-Forwarded-* a client stripped with `Connection: X-Forwarded-For`
    const gw = await startGateway({ upstream: fake.url, trusted_proxies: ['127.0.0.1'] });
    try {
      const viaProxy = await hit(gw.url, '/register', {
        method: 'POST',
        from: '127.0.0.1',
        body: { new_user_username: 'mallory', new_user_password: 'mallory-password-1' },
      });
      expect([viaProxy.status, viaProxy.body.error.code, viaProxy.body.error.details.setup_required]).toEqual([401, 'AUTH_REQUIRED', true]);
      expect(gw.composed.users.count()).toBe(0);
      const withCode = await hit(gw.url, '/register', {
        method: 'POST',
        from: '127.0.0.1',
        body: { new_user_username: 'owner', new_user_password: PW, setup_code: setupCode(gw.composed.notices) },
      });
      expect([withCode.status, withCode.body.role]).toEqual([201, 'admin']);
    } finally {
      await gw.close();
    }
  });

  test('allow_loopback_without_auth admits nobody through a trusted loopback proxy; other loopback sockets still work', async () => {
    const gw = await startGateway({ upstream: fake.url, allow_loopback_without_auth: true, trusted_proxies: ['127.0.0.1'] });
    try {
      const viaProxy = await hit(gw.url, '/object_info?atk-lbproxy', { from: '127.0.0.1' });
      expect([viaProxy.status, viaProxy.body.error.code]).toEqual([401, 'AUTH_REQUIRED']);
      expect(reached(fake, 'atk-lbproxy')).toBe(0);
      expect((await hit(gw.url, '/object_info?atk-lbproxy', { from: '127.0.0.3' })).status).toBe(200);
    } finally {
      await gw.close();
    }
  });
});

describe('revocation cannot be outrun', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, ...TRUST_LOCAL_PROXY });
    await registerFirstAdmin(gw);
  });
  afterAll(() => gw.close());

  test('a request admitted before a password change (its body held back) cannot mint a personal token after it', async () => {
    await registerUser(gw, 'victim1');
    const stolen = await login(gw, 'victim1');
    const pending = slowPost(gw.url, '/gateway/api/tokens', { authorization: `Bearer ${stolen.token}` }, { name: 'persistence' });
    await sleep(200);
    expect(
      (await hit(gw.url, '/gateway/api/users/victim1', { method: 'PATCH', headers: KEY, body: { password: 'fresh-password-1' } })).status,
    ).toBe(200);
    const res = await pending.finish();
    expect([res.status, res.body.error?.code]).toEqual([401, 'TOKEN_REVOKED']);
    expect(gw.composed.users.tokens.list('victim1')).toEqual([]);
  });

  test('nor create an admin after the admin was signed out, nor act as admin after being demoted', async () => {
    await registerUser(gw, 'boss2', { role: 'admin' });
    const stolen = await login(gw, 'boss2');
    const afterLogout = slowPost(
      gw.url,
      '/gateway/api/users',
      { authorization: `Bearer ${stolen.token}` },
      { username: 'backdoor', password: 'backdoor-pass-1', role: 'admin' },
    );
    await sleep(200);
    expect((await hit(gw.url, '/logout', { method: 'POST', headers: { authorization: `Bearer ${stolen.token}` } })).status).toBe(200);
    const res = await afterLogout.finish();
    expect([res.status, res.body.error?.code]).toEqual([401, 'TOKEN_REVOKED']);
    expect(gw.composed.users.get('backdoor')).toBeUndefined();

    const s = await login(gw, 'boss2');
    const afterDemotion = slowPost(
      gw.url,
      '/gateway/api/users',
      { authorization: `Bearer ${s.token}` },
      { username: 'backdoor', password: 'backdoor-pass-1', role: 'admin' },
    );
    await sleep(200);
    expect((await hit(gw.url, '/gateway/api/users/boss2', { method: 'PATCH', headers: KEY, body: { role: 'user' } })).status).toBe(200);
    const demoted = await afterDemotion.finish();
    expect([demoted.status, demoted.body.error?.code]).toEqual([403, 'FORBIDDEN']);
    expect(gw.composed.users.get('backdoor')).toBeUndefined();
  });

  test('nor start or cancel a model download after the downloader lost the permission or was disabled', async () => {
    const r = await hit(gw.url, '/gateway/api/users', {
      method: 'POST',
      headers: KEY,
      body: { username: 'dl1', password: PW, role: 'user', permissions: ['download_models'] },
    });
    expect(r.status).toBe(201);
    const s = await login(gw, 'dl1');
    const body = { models: { 'checkpoints/x.safetensors': 'https://huggingface.co/a/b/resolve/main/x.safetensors' } };
    const held = slowPost(gw.url, '/api/download-models', { authorization: `Bearer ${s.token}` }, body);
    await sleep(200);
    expect((await hit(gw.url, '/gateway/api/users/dl1', { method: 'PATCH', headers: KEY, body: { permissions: [] } })).status).toBe(200);
    const res = await held.finish();
    expect([res.status, res.body.error?.code]).toEqual([403, 'FORBIDDEN']);

    expect(
      (await hit(gw.url, '/gateway/api/users/dl1', { method: 'PATCH', headers: KEY, body: { permissions: ['download_models'] } })).status,
    ).toBe(200);
    const again = slowPost(
      gw.url,
      '/api/cancel-model-download-session',
      { authorization: `Bearer ${s.token}` },
      { model_id: 'checkpoints/x.safetensors' },
    );
    await sleep(200);
    expect((await hit(gw.url, '/gateway/api/users/dl1', { method: 'PATCH', headers: KEY, body: { disabled: true } })).status).toBe(200);
    const res2 = await again.finish();
    expect(res2.status).toBe(401);
  });

  test('a login still checking the old password when it changes gets no session', async () => {
    await registerUser(gw, 'victim2');
    // A slow hash (cost 12) keeps the attacker's login inside bcrypt while the owner changes the password.
    await gw.composed.users.update('victim2', { password_hash: await bcrypt.hash(PW, 12) });
    const racing = hit(gw.url, '/login', {
      method: 'POST',
      headers: { 'x-forwarded-for': '198.51.100.20' },
      body: { username: 'victim2', password: PW },
    });
    await sleep(30);
    expect(
      (await hit(gw.url, '/gateway/api/users/victim2', { method: 'PATCH', headers: KEY, body: { password: 'fresh-password-2' } })).status,
    ).toBe(200);
    const res = await racing;
    expect([res.status, res.body.error?.code]).toEqual([401, 'INVALID_CREDENTIALS']);
    expect(res.headers['set-cookie']).toBeUndefined();
  });

  test('a password change verified against the old password does not overwrite one made meanwhile', async () => {
    await registerUser(gw, 'victim3');
    const attacker = await login(gw, 'victim3'); // knows the old password and holds a session
    await gw.composed.users.update('victim3', { password_hash: await bcrypt.hash(PW, 12), tokens_valid_after: 0 });
    const racing = hit(gw.url, '/gateway/api/me/password', {
      method: 'POST',
      headers: { authorization: `Bearer ${attacker.token}` },
      body: { current_password: PW, new_password: 'attacker-password-1' },
    });
    await sleep(30);
    expect(
      (await hit(gw.url, '/gateway/api/users/victim3', { method: 'PATCH', headers: KEY, body: { password: 'owner-password-1' } })).status,
    ).toBe(200);
    const res = await racing;
    expect(res.status).toBe(401);
    expect(
      (
        await hit(gw.url, '/login', {
          method: 'POST',
          headers: { 'x-forwarded-for': '198.51.100.21' },
          body: { username: 'victim3', password: 'owner-password-1' },
        })
      ).status,
    ).toBe(200);
  });
});

describe('personal tokens', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, ...TRUST_LOCAL_PROXY });
    await registerFirstAdmin(gw);
    await registerUser(gw, 'dora');
  });
  afterAll(() => gw.close());

  test('a short-lived personal token cannot mint a longer-lived one (it would outlive its own expiry and revocation)', async () => {
    const s = await login(gw, 'dora');
    const short = await hit(gw.url, '/gateway/api/tokens', {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}` },
      body: { name: 'ci', expires_in_hours: 1 },
    });
    expect(short.status).toBe(201);
    for (const headers of [{ authorization: `Bearer ${short.body.token}` }, { 'x-api-key': short.body.token as string }] as Record<
      string,
      string
    >[]) {
      const res = await hit(gw.url, '/gateway/api/tokens', { method: 'POST', headers, body: { name: 'forever' } });
      expect([res.status, res.body.error.code]).toEqual([403, 'FORBIDDEN']);
    }
    const viaQuery = await hit(gw.url, `/gateway/api/tokens?token=${short.body.token}`, { method: 'POST', body: { name: 'forever' } });
    expect(viaQuery.status).toBe(403);
    expect(gw.composed.users.tokens.list('dora').map((t) => t.name)).toEqual(['ci']);
  });
});

describe('brute force', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    // cost 10: each guess spends a few tens of ms in bcrypt, so a parallel burst really overlaps
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, bcrypt_cost: 10, blacklist_after_attempts: 0, ...TRUST_LOCAL_PROXY });
    await registerFirstAdmin(gw);
    await registerUser(gw, 'owner6');
    await registerUser(gw, 'erin');
  });
  afterAll(() => gw.close());

  const guess = (ip: string, username: string, password = 'wrong-password-1') =>
    hit(gw.url, '/login', { method: 'POST', headers: { 'x-forwarded-for': ip }, body: { username, password } });
  const tally = (res: { status: number }[]) =>
    res.reduce<Record<number, number>>((m, r) => ((m[r.status] = (m[r.status] ?? 0) + 1), m), {});

  test('a parallel burst of guesses gets at most 5 answers; the rest are 429, and so is the right password after it', async () => {
    const ip = '203.0.113.50';
    const res = await Promise.all(Array.from({ length: 30 }, (_, i) => guess(ip, `spray${i}`)));
    const counts = tally(res);
    expect(counts[401] ?? 0).toBeLessThanOrEqual(5);
    expect(counts[429]).toBeGreaterThanOrEqual(25);
    // (A right password inside the burst may be one of the first checks in flight, before five have failed, and then
    // rightly succeeds; once the burst has been answered the address is locked out.)
    // The cap on checks in flight may have refused most of the burst unhashed: guesses go on one at a time until the
    // lockout answers, and in all no more than five were ever answered 401.
    let answered401 = counts[401] ?? 0;
    for (let i = 0; i < 6; i++) {
      const r = await guess(ip, `spray-more${i}`);
      if (r.status === 429) break;
      expect(r.status).toBe(401);
      answered401++;
    }
    expect(answered401).toBeLessThanOrEqual(5);
    const right = await guess(ip, 'erin', PW);
    expect([right.status, right.body.error?.code]).toEqual([429, 'RATE_LIMITED']);
  });

  test('IPv6: the addresses of one /64 are one client — rotating them neither dodges the lockout nor locks the owner out', async () => {
    const net = '2001:db8:6:1::';
    for (let i = 1; i <= 5; i++) expect((await guess(`${net}${i}`, `v6spray${i}`)).status).toBe(401);
    const rotated = await guess(`${net}abcd`, 'v6spray6');
    expect([rotated.status, rotated.body.error.code]).toEqual([429, 'RATE_LIMITED']);
    expect((await guess('2001:db8:6:2::1', 'v6spray7')).status).toBe(401); // the next /64 is someone else

    // Guessing at one account from many addresses of one /64 is one guesser: the owner still gets in.
    const net2 = '2001:db8:6:3::';
    for (let i = 1; i <= 6; i++) await guess(`${net2}${i}`, 'owner6');
    expect((await guess('198.51.100.66', 'owner6', PW)).status).toBe(200);
  });

  test('a stolen session cannot guess the current password without limit', async () => {
    await registerUser(gw, 'frank');
    const s = await login(gw, 'frank');
    const change = (current: string) =>
      hit(gw.url, '/gateway/api/me/password', {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'x-forwarded-for': '203.0.113.60' },
        body: { current_password: current, new_password: 'attacker-password-1' },
      });
    for (let i = 0; i < 5; i++) expect((await change(`guess-${i}-password`)).status).toBe(401);
    const res = await change(PW);
    expect([res.status, res.body.error.code]).toEqual([429, 'RATE_LIMITED']);
    expect(
      (
        await hit(gw.url, '/login', {
          method: 'POST',
          headers: { 'x-forwarded-for': '198.51.100.67' },
          body: { username: 'frank', password: PW },
        })
      ).status,
    ).toBe(200);
  });

  test('blacklist_after_attempts blacklists an IPv6 client by its /64', async () => {
    const g = await startGateway({ upstream: fake.url, blacklist_after_attempts: 3, ...TRUST_LOCAL_PROXY });
    try {
      for (let i = 1; i <= 3; i++) {
        await hit(g.url, '/login', {
          method: 'POST',
          headers: { 'x-forwarded-for': `2001:db8:7:8::${i}` },
          body: { username: `n${i}x`, password: 'wrong-password-1' },
        });
      }
      await waitFor(
        () => fs.existsSync(g.config.paths.blacklist) && fs.readFileSync(g.config.paths.blacklist, 'utf8').includes('2001:db8:7:8::/64'),
        2000,
      );
      const other = await hit(g.url, '/health', { headers: { 'x-forwarded-for': '2001:db8:7:8::ffff' } });
      expect([other.status, other.body.error.code]).toEqual([403, 'IP_BLOCKED']);
      expect((await hit(g.url, '/health', { headers: { 'x-forwarded-for': '2001:db8:7:9::1' } })).status).toBe(200);
    } finally {
      await g.close();
    }
  });
});

describe('logs', () => {
  test('a credential in the query is redacted from the access log however its name is percent-encoded', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
    try {
      for (const name of ['api%5Fkey', 'api%5fkey', '%61pi_key', 'tok%65n', 'API_KEY']) {
        await hit(gw.url, `/object_info?atk-log&${name}=${TEST_KEY}`);
      }
      const logs = await flushedLogs(gw);
      expect(logs.filter((l) => typeof l.path === 'string' && l.path.includes('atk-log')).length).toBe(5);
      expect(logText(logs)).not.toContain(TEST_KEY);
    } finally {
      await gw.close();
    }
  });
});

describe('IP lists', () => {
  test('a change that would block the caller’s own address is refused (409) and nothing is written', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
    try {
      for (const body of [
        { whitelist: ['203.0.113.7'] },
        { blacklist: ['0.0.0.0/0'] },
        { whitelist: ['127.0.0.0/8'], blacklist: ['127.0.0.1'] },
      ]) {
        const res = await hit(gw.url, '/gateway/api/ip-lists', { method: 'PUT', headers: KEY, body });
        expect([JSON.stringify(body), res.status, res.body.error?.code]).toEqual([JSON.stringify(body), 409, 'SELF_LOCKOUT']);
      }
      expect(fs.existsSync(gw.config.paths.whitelist)).toBe(false);
      expect(fs.existsSync(gw.config.paths.blacklist)).toBe(false);
      expect(
        (
          await hit(gw.url, '/gateway/api/ip-lists', {
            method: 'PUT',
            headers: KEY,
            body: { whitelist: ['127.0.0.0/8'], blacklist: ['::/0'] },
          })
        ).status,
      ).toBe(200);
      expect((await hit(gw.url, '/object_info', { headers: KEY })).status).toBe(200);
    } finally {
      await gw.close();
    }
  });
});

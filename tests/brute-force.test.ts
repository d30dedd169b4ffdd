import fs from 'node:fs';
import { createAudit } from '../gateway/audit';
import { createLogger } from '../gateway/log';
import { createBruteForce } from '../gateway/net/bruteForce';
import type { IpLists } from '../gateway/net/ipLists';
import { AppError } from '../gateway/errors';
import { setContext } from '../gateway/http/context';
import type { IncomingMessage } from 'node:http';
import { login, PW, registerFirstAdmin, registerUser } from './helpers/auth';
import { hit, reached, waitFor } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

let fake: FakeComfy;
beforeAll(async () => {
  fake = await startFakeComfy();
});
afterAll(() => fake.close());

const loginFrom = (gw: TestGateway, from: string, username: string, password: string, headers: Record<string, string> = {}) =>
  hit(gw.url, '/login', { method: 'POST', from, headers, body: { username, password } });

function expectRateLimited(res: { status: number; headers: Record<string, unknown>; body: any }) {
  expect(res.status).toBe(429);
  expect(res.body.error.code).toBe('RATE_LIMITED');
  const after = Number(res.headers['retry-after']);
  expect(after).toBeGreaterThanOrEqual(1);
  expect(after).toBeLessThanOrEqual(300);
}

describe('failed logins from an untrusted socket', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, trusted_proxies: ['127.0.0.9'] });
    await registerFirstAdmin(gw);
    await registerUser(gw, 'alice');
    await registerUser(gw, 'carol');
  });
  afterAll(() => gw.close());

  test('5 failures → 429 RATE_LIMITED with Retry-After, even for the right password; rotating spoofed headers does not dodge it', async () => {
    for (let i = 0; i < 5; i++) {
      const res = await loginFrom(gw, '127.0.0.2', i % 2 ? 'alice' : `nobody${i}`, 'wrong-password', {
        'X-Forwarded-For': `198.51.100.${i}`,
        'X-Real-IP': `198.51.100.${i}`,
      });
      expect(res.status).toBe(401);
      expect(res.body.error.code).toBe('INVALID_CREDENTIALS');
    }
    expectRateLimited(await loginFrom(gw, '127.0.0.2', 'someone', 'wrong-password', { 'X-Forwarded-For': '198.51.100.99' }));
    const right = await loginFrom(gw, '127.0.0.2', 'alice', PW, { 'X-Forwarded-For': '198.51.100.98' });
    expectRateLimited(right);
    expect(right.headers['set-cookie']).toBeUndefined();
  });

  test('the spoofed addresses were not blocked in its place, nor was the account it guessed at: another socket (even claiming the locked one) is fine', async () => {
    const wrong = await loginFrom(gw, '127.0.0.3', 'alice', 'wrong-password', { 'X-Forwarded-For': '127.0.0.2' });
    expect(wrong.status).toBe(401);
    const res = await loginFrom(gw, '127.0.0.3', 'alice', PW, { 'X-Forwarded-For': '127.0.0.2' });
    expect(res.status).toBe(200);
    // and through the trusted proxy, the client addresses the attacker spoofed are not locked either
    const viaProxy = await loginFrom(gw, '127.0.0.9', 'carol', PW, { 'X-Forwarded-For': '198.51.100.0' });
    expect(viaProxy.status).toBe(200);
  });

  test('a locked-out IP presenting credentials anywhere gets 429 and nothing reaches ComfyUI', async () => {
    fake.clearRequests();
    const res = await hit(gw.url, '/object_info?edge-bf', { from: '127.0.0.2', headers: { 'x-api-key': TEST_KEY } });
    expectRateLimited(res);
    expect(reached(fake, 'edge-bf')).toBe(0);
    // other addresses keep working
    expect((await hit(gw.url, '/object_info?edge-bf', { from: '127.0.0.4', headers: { 'x-api-key': TEST_KEY } })).status).toBe(200);
  });

  test('registrations with bad admin credentials count too', async () => {
    for (let i = 0; i < 5; i++) {
      const r = await hit(gw.url, '/register', {
        method: 'POST',
        from: '127.0.0.5',
        body: { new_user_username: `x${i}y`, new_user_password: 'long-enough-1', username: 'admin', password: 'nope-nope' },
      });
      expect(r.status).toBe(401);
    }
    expectRateLimited(
      await hit(gw.url, '/register', {
        method: 'POST',
        from: '127.0.0.5',
        body: { new_user_username: 'zz', new_user_password: 'long-enough-1', username: 'admin', password: PW },
      }),
    );
    const users = (await hit(gw.url, '/gateway/api/users', { headers: { 'x-api-key': TEST_KEY } })).body.users as { username: string }[];
    expect(users.map((u) => u.username)).toContain('alice');
    expect(users.map((u) => u.username)).not.toContain('zz');
  });
});

describe('through a trusted proxy', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, trusted_proxies: ['127.0.0.2'] });
    await registerFirstAdmin(gw);
    await registerUser(gw, 'alice');
    await registerUser(gw, 'dave');
  });
  afterAll(() => gw.close());

  test('the forwarded client is counted; a client-written left part neither dodges nor frames anyone', async () => {
    for (let i = 0; i < 5; i++) {
      // the attacker (203.0.113.66) writes a victim's address to the left each time; the proxy appends the real one
      const r = await loginFrom(gw, '127.0.0.2', `ghost${i}`, 'wrong-password', { 'X-Forwarded-For': `203.0.113.${i}, 203.0.113.66` });
      expect(r.status).toBe(401);
    }
    expectRateLimited(await loginFrom(gw, '127.0.0.2', 'ghost9', 'wrong-password', { 'X-Forwarded-For': '203.0.113.66' }));
    expectRateLimited(await loginFrom(gw, '127.0.0.2', 'ghost9', 'wrong-password', { 'X-Forwarded-For': '198.51.100.1, 203.0.113.66' }));
    // the victims and the proxy's other clients are unaffected
    expect((await loginFrom(gw, '127.0.0.2', 'alice', PW, { 'X-Forwarded-For': '203.0.113.0' })).status).toBe(200);
    expect((await loginFrom(gw, '127.0.0.2', 'alice', 'wrong-password', { 'X-Forwarded-For': '203.0.113.1' })).status).toBe(401);
  });

  test('per username: 5 failures on one name from several addresses lock that name, not the addresses', async () => {
    for (let i = 0; i < 5; i++) {
      const r = await loginFrom(gw, '127.0.0.2', 'dave', 'wrong-password', { 'X-Forwarded-For': `192.0.2.${i + 10}` });
      expect(r.status).toBe(401);
    }
    expectRateLimited(await loginFrom(gw, '127.0.0.2', 'dave', PW, { 'X-Forwarded-For': '192.0.2.99' }));
    expectRateLimited(await loginFrom(gw, '127.0.0.2', 'DAVE', PW, { 'X-Forwarded-For': '192.0.2.98' }));
    expect((await loginFrom(gw, '127.0.0.2', 'alice', PW, { 'X-Forwarded-For': '192.0.2.10' })).status).toBe(200);
  });

  test('successes do not count', async () => {
    for (let i = 0; i < 12; i++)
      expect((await loginFrom(gw, '127.0.0.2', 'alice', PW, { 'X-Forwarded-For': '192.0.2.200' })).status).toBe(200);
  });
});

describe('bad tokens', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
  });
  afterAll(() => gw.close());

  test('5 bad keys/tokens → the 6th credential, even the right key, gets 429; nothing reaches ComfyUI', async () => {
    fake.clearRequests();
    const bad: Record<string, string>[] = [
      { 'x-api-key': 'wrong-key-0123456789' },
      { authorization: 'Bearer wrong-key-0123456789' },
      { authorization: 'Bearer aaa.bbb.ccc' },
      { authorization: 'Basic Zm9vOmJhcg==' },
    ];
    for (const h of bad) expect((await hit(gw.url, '/object_info?edge-tok', { from: '127.0.0.6', headers: h })).status).toBe(401);
    expect((await hit(gw.url, '/object_info?edge-tok&api_key=guess-0123456789', { from: '127.0.0.6' })).status).toBe(401);
    expectRateLimited(await hit(gw.url, '/object_info?edge-tok', { from: '127.0.0.6', headers: { 'x-api-key': TEST_KEY } }));
    expect(reached(fake, 'edge-tok')).toBe(0);
    // a different address is unaffected
    expect((await hit(gw.url, '/object_info?edge-tok', { from: '127.0.0.7', headers: { 'x-api-key': TEST_KEY } })).status).toBe(200);
  });

  test('guessing through a public route (/health) counts as well', async () => {
    for (let i = 0; i < 5; i++) await hit(gw.url, '/health', { from: '127.0.0.8', headers: { 'x-api-key': `guess-${i}-0123456789` } });
    expectRateLimited(await hit(gw.url, '/health', { from: '127.0.0.8', headers: { 'x-api-key': TEST_KEY } }));
  });

  test('a signed-out session token sent again and again does not lock its address out; a forged one still does', async () => {
    await registerFirstAdmin(gw);
    const token = (await login(gw, 'admin')).token as string;
    expect((await hit(gw.url, '/logout', { method: 'POST', headers: { authorization: `Bearer ${token}` } })).status).toBeLessThan(300);
    for (let i = 0; i < 8; i++) {
      const r = await hit(gw.url, '/object_info?edge-revoked', { from: '127.0.0.10', headers: { authorization: `Bearer ${token}` } });
      expect([r.status, r.body.error.code]).toEqual([401, 'TOKEN_REVOKED']);
    }
    expect(reached(fake, 'edge-revoked')).toBe(0);
    expect((await hit(gw.url, '/object_info', { from: '127.0.0.10', headers: { 'x-api-key': TEST_KEY } })).status).toBe(200);
    // the same token with its signature altered is a guess like any other
    const forged = token.slice(0, -4) + (token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    for (let i = 0; i < 5; i++) await hit(gw.url, '/object_info', { from: '127.0.0.11', headers: { authorization: `Bearer ${forged}` } });
    expectRateLimited(await hit(gw.url, '/object_info', { from: '127.0.0.11', headers: { 'x-api-key': TEST_KEY } }));
  });

  test('a stale session cookie does not lock anyone out', async () => {
    for (let i = 0; i < 8; i++) {
      const r = await hit(gw.url, '/object_info', { from: '127.0.0.9', headers: { cookie: 'jwt_token=aaa.bbb.ccc' } });
      expect(r.status).toBe(401);
    }
    expect((await hit(gw.url, '/object_info', { from: '127.0.0.9', headers: { 'x-api-key': TEST_KEY } })).status).toBe(200);
  });
});

describe('blacklist_after_attempts', () => {
  test('N failures append the real client IP to blacklist.txt; the list reloads and the address is refused', async () => {
    const gw = await startGateway(
      { upstream: fake.url, api_key: TEST_KEY, blacklist_after_attempts: 3 },
      { files: { 'blacklist.txt': '# existing\n203.0.113.1\n' } },
    );
    try {
      for (let i = 0; i < 3; i++) {
        const r = await loginFrom(gw, '127.0.0.2', `user${i}`, 'wrong-password', { 'X-Forwarded-For': '127.0.0.3' });
        expect(r.status).toBe(401);
      }
      await waitFor(() => fs.readFileSync(gw.config.paths.blacklist, 'utf8').includes('127.0.0.2'), 2000);
      const text = fs.readFileSync(gw.config.paths.blacklist, 'utf8');
      expect(text.startsWith('# existing\n203.0.113.1\n127.0.0.2 # auto-blacklisted ')).toBe(true);
      expect(text).not.toContain('127.0.0.3');
      const blocked = await hit(gw.url, '/health', { from: '127.0.0.2' });
      expect(blocked.status).toBe(403);
      expect(blocked.body.error.code).toBe('IP_BLOCKED');
      expect((await hit(gw.url, '/health', { from: '127.0.0.3' })).status).toBe(200);
      const logs = await flushedLogs(gw);
      expect(logs.some((l) => l.audit === true && l.event === 'ip_auto_blacklisted' && l.ip === '127.0.0.2')).toBe(true);
    } finally {
      await gw.close();
    }
  });
});

describe('a trusted proxy is never blacklisted', () => {
  test('failures charged to a trusted proxy that named no client lock it out for a while but never blacklist it', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, blacklist_after_attempts: 2, trusted_proxies: ['127.0.0.4'] });
    try {
      for (let i = 0; i < 3; i++) expect((await loginFrom(gw, '127.0.0.4', `p${i}`, 'wrong-password')).status).toBe(401);
      await new Promise((r) => setTimeout(r, 300));
      expect(fs.existsSync(gw.config.paths.blacklist) ? fs.readFileSync(gw.config.paths.blacklist, 'utf8') : '').not.toContain('127.0.0.4');
      // the same proxy naming its clients: those are blacklisted as usual
      for (let i = 0; i < 2; i++)
        expect((await loginFrom(gw, '127.0.0.4', `q${i}`, 'wrong-password', { 'X-Forwarded-For': '198.51.100.77' })).status).toBe(401);
      await waitFor(
        () => fs.existsSync(gw.config.paths.blacklist) && fs.readFileSync(gw.config.paths.blacklist, 'utf8').includes('198.51.100.77'),
        2000,
      );
      expect(fs.readFileSync(gw.config.paths.blacklist, 'utf8')).not.toContain('127.0.0.4');
    } finally {
      await gw.close();
    }
  });
});

describe('the lockout grows to at most 5 minutes (unit, fake clock)', () => {
  test('30 s, then doubling per further failure, capped at 300 s', async () => {
    let t = 1_000_000;
    const logger = createLogger({ levels: ['silent'], file: null, stdout: false });
    const appended: string[] = [];
    const ipLists = { appendToBlacklist: async (ip: string) => (appended.push(ip), true) } as unknown as IpLists;
    const bf = createBruteForce({
      config: { blacklist_after_attempts: 0 },
      audit: createAudit(logger),
      ipLists,
      logger,
      options: { now: () => t },
    });
    const req = { headers: {}, socket: { remoteAddress: '192.0.2.1' } } as unknown as IncomingMessage;
    setContext(req, { clientIp: '192.0.2.1' } as never);
    const waitOf = (): number => {
      try {
        bf.check(req);
        return 0;
      } catch (e) {
        expect((e as AppError).code).toBe('RATE_LIMITED');
        return Number((e as AppError).headers['Retry-After']);
      }
    };
    const waits: number[] = [];
    for (let i = 0; i < 10; i++) {
      const fresh = { ...req, headers: {} } as IncomingMessage; // each attempt is its own request
      setContext(fresh, { clientIp: '192.0.2.1' } as never);
      bf.fail(fresh);
      await Promise.resolve();
      await new Promise((r) => setImmediate(r));
      waits.push(waitOf());
      t += waits[waits.length - 1] * 1000; // wait it out
    }
    expect(waits).toEqual([0, 0, 0, 0, 30, 60, 120, 240, 300, 300]);
    bf.close();
    expect(appended).toEqual([]);
  });

  test('failures older than the window are forgotten', async () => {
    const logger = createLogger({ levels: ['silent'], file: null, stdout: false });
    const bf = createBruteForce({
      config: { blacklist_after_attempts: 0 },
      audit: createAudit(logger),
      ipLists: {} as IpLists,
      logger,
      options: { windowMs: 300 },
    });
    const attempt = () => {
      const req = { headers: {}, socket: { remoteAddress: '192.0.2.2' } } as unknown as IncomingMessage;
      setContext(req, { clientIp: '192.0.2.2' } as never);
      return req;
    };
    for (let i = 0; i < 4; i++) bf.fail(attempt(), 'erin');
    await new Promise((r) => setTimeout(r, 400));
    bf.fail(attempt(), 'erin');
    await new Promise((r) => setImmediate(r));
    expect(() => bf.check(attempt(), 'erin')).not.toThrow();
    for (let i = 0; i < 4; i++) bf.fail(attempt(), 'erin');
    await new Promise((r) => setImmediate(r));
    expect(() => bf.check(attempt(), 'erin')).toThrow(/Too many failed attempts/);
    expect(() => bf.check(attempt())).toThrow(/Too many failed attempts/);
    bf.close();
  });
});

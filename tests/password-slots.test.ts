/**
 * Issue 9 (identity): a burst of wrong passwords from one address is not hashed in full. Password checks in flight
 * are capped per client and overall (the excess gets 429 RATE_LIMITED at once, nothing hashed), and bcrypt leaves
 * pool threads free for file I/O, so another user's requests still answer quickly.
 */
import { PASSWORD_CHECKS_PER_CLIENT, createPasswordSlots } from '../gateway/auth/passwordSlots';
import { anonymousLanes, hashingThreads } from '../gateway/auth/passwords';
import { PW, TRUST_LOCAL_PROXY, login } from './helpers/auth';
import { hit } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

let fake: FakeComfy;
let gw: TestGateway;
const admin = { 'X-API-Key': TEST_KEY };

beforeAll(async () => {
  fake = await startFakeComfy();
  // A realistic cost, so that hashing a whole burst would take seconds of every pool thread.
  gw = await startGateway({
    api_key: TEST_KEY,
    upstream: fake.url,
    bcrypt_cost: 12,
    ...TRUST_LOCAL_PROXY,
    model_downloads: { enabled: false },
  });
  for (const u of ['ivan', 'judy'])
    expect((await hit(gw.url, '/gateway/api/users', { method: 'POST', headers: admin, body: { username: u, password: PW } })).status).toBe(
      201,
    );
});
afterAll(async () => {
  await gw.close();
  await fake.close();
});

const tally = (statuses: number[]) => statuses.reduce<Record<number, number>>((t, s) => ((t[s] = (t[s] ?? 0) + 1), t), {});
const audits = async (event: string) => (await flushedLogs(gw)).filter((l) => l.audit === true && l.event === event);

describe('password checks in flight are capped', () => {
  it('200 wrong passwords at once from one address: the excess is 429 without hashing; another user is served quickly', async () => {
    const judyFrom = { 'X-Forwarded-For': '203.0.113.77' };
    const judy = await login({ url: gw.url }, 'judy');
    const mintToken = async (name: string) => {
      const t0 = Date.now();
      const r = await hit(gw.url, '/gateway/api/tokens', {
        method: 'POST',
        headers: { ...judyFrom, Authorization: `Bearer ${judy.token}` },
        body: { name },
      });
      expect(r.status).toBe(201);
      return Date.now() - t0;
    };
    const burstOf = (body: (i: number) => Record<string, unknown>, ip: string) =>
      Array.from({ length: 200 }, (_, i) => hit(gw.url, '/login', { method: 'POST', headers: { 'X-Forwarded-For': ip }, body: body(i) }));

    // Control: the same burst refused without any hashing (no password at all), to learn what 200 requests cost
    // this (shared, loaded) machine by themselves.
    const control = burstOf(() => ({ username: 'ivan' }), '203.0.113.51');
    const controlMs = await mintToken('during-control');
    await Promise.all(control);

    const failuresBefore = (await audits('login_failure')).length;
    const burst = burstOf((i) => ({ username: 'ivan', password: `wrong-guess-${i}` }), '203.0.113.50');
    // While the burst is answered, judy creates a token (a store write) and signs in (a hash) from her own address.
    const tokenMs = await mintToken('during-burst');
    const signIn = await hit(gw.url, '/login', { method: 'POST', headers: judyFrom, body: { username: 'judy', password: PW } });
    const answers = await Promise.all(burst);

    expect(signIn.status).toBe(200);
    const counts = tally(answers.map((a) => a.status));
    expect(counts[200] ?? 0).toBe(0);
    expect(counts[429]).toBeGreaterThanOrEqual(190);
    for (const a of answers.filter((x) => x.status === 429)) expect(a.body.error.code).toBe('RATE_LIMITED');
    // Only the checks that ran were hashed (each audited as a failure): every 401, plus a few whose answer became the
    // lockout's 429 once five had failed; the rest were refused before any hashing.
    const failures = (await audits('login_failure')).length - failuresBefore;
    expect(failures).toBeGreaterThanOrEqual(counts[401] ?? 0);
    expect(failures).toBeLessThanOrEqual(PASSWORD_CHECKS_PER_CLIENT + 5);
    // Hashing the whole burst would hold the hashing lane for 200 × ~0.25 s / 2 (25 s and more); judy waited about as
    // long as during the control burst, not behind the hashes (the slack is for a machine other work is loading).
    expect(tokenMs).toBeLessThan(controlMs * 3 + 5000);
  });

  it('a stolen session guessing the current password in parallel is capped the same way', async () => {
    const ivan = await hit(gw.url, '/login', {
      method: 'POST',
      headers: { 'X-Forwarded-For': '203.0.113.90' },
      body: { username: 'ivan', password: PW },
    });
    expect(ivan.status).toBe(200);
    const before = (await audits('password_change_failure')).length;
    const answers = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        hit(gw.url, '/gateway/api/me/password', {
          method: 'POST',
          headers: { 'X-Forwarded-For': '203.0.113.91', Authorization: `Bearer ${ivan.body.token}` },
          body: { current_password: `guess-${i}-xxxx`, new_password: 'new-password-123' },
        }),
      ),
    );
    const counts = tally(answers.map((a) => a.status));
    expect(counts[200] ?? 0).toBe(0);
    expect(counts[429]).toBeGreaterThanOrEqual(30);
    const failures = (await audits('password_change_failure')).length - before;
    expect(failures).toBeGreaterThanOrEqual(counts[401] ?? 0);
    expect(failures).toBeLessThanOrEqual(PASSWORD_CHECKS_PER_CLIENT + 5);
  });
});

describe('createPasswordSlots (unit)', () => {
  const req = (ip: string) => ({ ip }) as unknown as import('node:http').IncomingMessage;
  const slots = () => createPasswordSlots({ clientIp: (r) => (r as unknown as { ip: string }).ip, perClient: 2, total: 3 });
  const gate = () => {
    let open!: () => void;
    const p = new Promise<void>((r) => (open = r));
    return { p, open };
  };

  it('refuses past the per-client and total caps before running the check, and frees slots when checks end', async () => {
    const s = slots();
    const g = gate();
    let ran = 0;
    const check = () => {
      ran++;
      return g.p;
    };
    const a1 = s.run(req('a'), check);
    const a2 = s.run(req('a'), check);
    await expect(s.run(req('a'), check)).rejects.toMatchObject({ status: 429, code: 'RATE_LIMITED', details: { scope: 'client' } });
    const b1 = s.run(req('b'), check);
    await expect(s.run(req('c'), check)).rejects.toMatchObject({ status: 429, code: 'RATE_LIMITED', details: { scope: 'gateway' } });
    expect(ran).toBe(3);
    g.open();
    await Promise.all([a1, a2, b1]);
    await expect(s.run(req('a'), async () => 'ok')).resolves.toBe('ok');
    // a failing check frees its slot too
    await expect(s.run(req('a'), async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await Promise.all([s.run(req('a'), async () => 1), s.run(req('a'), async () => 2)]);
  });

  it('bcrypt runs one job per core, at least two, and leaves two pool threads free for file I/O', () => {
    expect(anonymousLanes(2)).toBe(1);
    expect(anonymousLanes(14)).toBe(13);
    expect(anonymousLanes(1)).toBe(1);
    expect(hashingThreads({}, 8)).toBe(2);
    expect(hashingThreads({ UV_THREADPOOL_SIZE: '16' }, 32)).toBe(14);
    expect(hashingThreads({ UV_THREADPOOL_SIZE: '2' }, 8)).toBe(1);
    expect(hashingThreads({ UV_THREADPOOL_SIZE: '16' }, 2)).toBe(2);
    expect(hashingThreads({}, 1)).toBe(2);
  });
});

import fs from 'node:fs';
import { login, PW, registerFirstAdmin, registerUser } from './helpers/auth';
import { hit } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { clientTraffic } from './helpers/traffic';

const WRONG_PASSWORD = 'Wr0ng-but-Secret-Guess!';
const GUESSED_KEY = 'guessed-key-abcdef0123456789';
const UA = 'edge-audit-agent/1.0';

let fake: FakeComfy;
let gw: TestGateway;
const secrets: string[] = [PW, WRONG_PASSWORD, GUESSED_KEY, TEST_KEY];

beforeAll(async () => {
  fake = await startFakeComfy();
  gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, blacklist_after_attempts: 3 });
  await registerFirstAdmin(gw);
  await registerUser(gw, 'bob');
  // a session, a personal token, a logout
  const admin = await login(gw, 'admin');
  secrets.push(admin.token, admin.cookie.split('=')[1]);
  const created = await hit(gw.url, '/gateway/api/tokens', {
    method: 'POST',
    headers: { authorization: `Bearer ${admin.token}`, 'user-agent': UA },
    body: { name: 'script' },
  });
  expect(created.status).toBe(201);
  secrets.push(created.body.token);
  expect(
    (await hit(gw.url, `/gateway/api/tokens/${created.body.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${admin.token}` } }))
      .status,
  ).toBe(204);
  expect((await hit(gw.url, '/logout', { method: 'POST', headers: { authorization: `Bearer ${admin.token}` } })).status).toBe(200);
  // failures: a wrong password, a guessed key
  const failed = await hit(gw.url, '/login', {
    method: 'POST',
    from: '127.0.0.2',
    headers: { 'user-agent': UA },
    body: { username: 'bob', password: WRONG_PASSWORD },
  });
  expect(failed.status).toBe(401);
  expect((await hit(gw.url, '/object_info', { from: '127.0.0.2', headers: { 'x-api-key': GUESSED_KEY } })).status).toBe(401);
  expect((await hit(gw.url, `/object_info?api_key=${GUESSED_KEY}`, { from: '127.0.0.2' })).status).toBe(401);
  expect(clientTraffic(fake).filter((r) => r.rawPath.includes('object_info'))).toEqual([]);
  // the third failure auto-blacklists 127.0.0.2; its next request is an IP block
  await new Promise((r) => setTimeout(r, 200));
  expect((await hit(gw.url, '/health', { from: '127.0.0.2', headers: { 'user-agent': UA } })).status).toBe(403);
  // an admin action
  expect(
    (await hit(gw.url, '/gateway/api/ip-lists', { method: 'PUT', headers: { 'x-api-key': TEST_KEY }, body: { whitelist: [] } })).status,
  ).toBe(200);
});
afterAll(async () => {
  await gw.close();
  await fake.close();
});

describe('the audit trail', () => {
  test('JSON lines marked as audit in the log file, one per event, with who and from where', async () => {
    const logs = await flushedLogs(gw);
    const audit = logs.filter((l) => l.audit === true);
    const events = audit.map((l) => l.event);
    for (const e of [
      'register',
      'login_success',
      'token_create',
      'token_revoke',
      'logout',
      'login_failure',
      'ip_auto_blacklisted',
      'ip_blocked',
      'ip_lists_updated',
    ])
      expect([e, events.includes(e)]).toEqual([e, true]);
    const failure = audit.find((l) => l.event === 'login_failure')!;
    expect(failure).toMatchObject({ ip: '127.0.0.2', user_agent: UA, username: 'bob' });
    expect(audit.find((l) => l.event === 'ip_auto_blacklisted')).toMatchObject({ ip: '127.0.0.2' });
    expect(audit.find((l) => l.event === 'ip_blocked')).toMatchObject({ ip: '127.0.0.2', user_agent: UA, list: 'blacklist' });
    expect(audit.find((l) => l.event === 'token_create')).toMatchObject({ user: 'admin', user_agent: UA });
    expect(audit.find((l) => l.event === 'ip_lists_updated')).toMatchObject({ user: 'api-key' });
    for (const l of audit) expect(typeof l.time).toBe('string');
  });

  test('no secret appears anywhere in the log file: passwords, keys, tokens, cookies', async () => {
    await flushedLogs(gw);
    const text = fs.readFileSync(gw.config.paths.log!, 'utf8');
    expect(text.length).toBeGreaterThan(1000);
    for (const s of secrets) {
      expect(s.length).toBeGreaterThanOrEqual(8);
      expect([s.slice(0, 6), text.includes(s)]).toEqual([s.slice(0, 6), false]);
    }
    expect(text).not.toMatch(/"password"\s*:\s*"(?!\[redacted\])/);
  });

  test('GET /gateway/api/audit?limit= for admins: newest first, default 100, at most 1000', async () => {
    const all = await hit(gw.url, '/gateway/api/audit', { headers: { 'x-api-key': TEST_KEY } });
    expect(all.status).toBe(200);
    const events = all.body.events as { event: string; time: string }[];
    expect(events.length).toBeGreaterThan(5);
    expect(events.length).toBeLessThanOrEqual(100);
    expect(events[0].event).toBe('ip_lists_updated');
    expect(Date.parse(events[0].time)).toBeGreaterThanOrEqual(Date.parse(events[events.length - 1].time));
    const two = await hit(gw.url, '/gateway/api/audit?limit=2', { headers: { 'x-api-key': TEST_KEY } });
    expect(two.body.events).toHaveLength(2);
    expect(two.body.events[0]).toEqual(events[0]);
    expect((await hit(gw.url, '/api/gateway/api/audit?limit=5000', { headers: { 'x-api-key': TEST_KEY } })).status).toBe(200);
    const json = JSON.stringify(all.body);
    for (const s of secrets) expect(json.includes(s)).toBe(false);
    for (const bad of ['abc', '0', '-1', '1.5']) {
      const r = await hit(gw.url, `/gateway/api/audit?limit=${bad}`, { headers: { 'x-api-key': TEST_KEY } });
      expect([bad, r.status]).toEqual([bad, 400]);
    }
  });

  test('only admins may read it', async () => {
    const bob = await login(gw, 'bob');
    const res = await hit(gw.url, '/gateway/api/audit', { headers: { cookie: bob.cookie } });
    expect([res.status, res.body.error.code]).toEqual([403, 'FORBIDDEN']);
    const anon = await hit(gw.url, '/gateway/api/audit');
    expect([anon.status, anon.body.error.code]).toEqual([401, 'AUTH_REQUIRED']);
  });
});

test('audit lines are written even when log_levels hides info', async () => {
  const { startGateway, flushedLogs, TEST_KEY } = await import('./helpers/gateway');
  const quiet = await startGateway({ api_key: TEST_KEY, log_levels: ['warn'] });
  try {
    const res = await fetch(`${quiet.url}/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username: 'nobody', password: 'wrong-password-1' }),
    });
    expect(res.status).toBe(401);
    const logs = await flushedLogs(quiet);
    expect(logs.some((l) => l.audit === true && l.event === 'login_failure')).toBe(true);
    expect(logs.some((l) => l.msg === 'request')).toBe(false); // access lines are info: hidden as configured
  } finally {
    await quiet.close();
  }
});

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createAudit } from '../gateway/audit';
import { ConfigError } from '../gateway/config/load';
import { createLogger } from '../gateway/log';
import { createIpLists } from '../gateway/net/ipLists';
import { login, registerFirstAdmin, registerUser } from './helpers/auth';
import { hit, reached, upgradeStatus, waitFor } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

const KEY = { 'x-api-key': TEST_KEY };

let fake: FakeComfy;
beforeAll(async () => {
  fake = await startFakeComfy();
});
afterAll(async () => {
  await fake.close();
});

describe('start-up', () => {
  test('a malformed line stops start-up with the file and line number', async () => {
    const files = { 'blacklist.txt': '# comment\n203.0.113.1\n\n10.0.0.0/8 # trailing comment\nnot-an-ip\n2001:db8::/33\n10.0.0.0/33\n' };
    const err = await startGateway({ upstream: fake.url }, { files }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems.join('\n');
    expect(problems).toMatch(/blacklist\.txt:5: not an IP address or CIDR: "not-an-ip"/);
    expect(problems).toMatch(/blacklist\.txt:7: prefix length out of range/);
    expect(problems).not.toMatch(/:2:|:4:|:6:/);
  });

  test('the whitelist is checked the same way', async () => {
    await expect(startGateway({ upstream: fake.url }, { files: { 'whitelist.txt': '127.0.0.1\n127.1\n' } })).rejects.toThrow(
      /whitelist\.txt:2/,
    );
  });
});

describe('blocking at the front door', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway(
      { upstream: fake.url, api_key: TEST_KEY, trusted_proxies: ['127.0.0.4'] },
      { files: { 'blacklist.txt': '# bad actors\n127.0.0.2\n203.0.113.0/24\n2001:db8:bad::/48\n' } },
    );
  });
  afterAll(() => gw.close());
  beforeEach(() => fake.clearRequests());

  const probe = (from: string, headers: Record<string, string> = {}, p = '/object_info?edge-probe') =>
    hit(gw.url, p, { from, headers: { ...KEY, ...headers } });

  test('a blacklisted socket gets 403 IP_BLOCKED on every kind of route, and nothing reaches ComfyUI', async () => {
    for (const p of [
      '/object_info?edge-probe',
      '/health',
      '/login',
      '/gateway/static/gateway.css',
      '/prompt?edge-probe',
      '/nonexistent?edge-probe',
    ]) {
      const res = await probe('127.0.0.2', {}, p);
      expect([p, res.status, res.body?.error?.code]).toEqual([p, 403, 'IP_BLOCKED']);
    }
    const post = await hit(gw.url, '/prompt?edge-probe', { method: 'POST', from: '127.0.0.2', headers: KEY, body: { prompt: {} } });
    expect(post.status).toBe(403);
    expect(reached(fake, 'edge-probe')).toBe(0);
    // the rest of the world is fine
    expect((await probe('127.0.0.3')).status).toBe(200);
    expect(reached(fake, 'edge-probe')).toBe(1);
  });

  test('WebSocket upgrades are refused the same way', async () => {
    expect(await upgradeStatus(gw.url, '/ws?clientId=edge-probe', { from: '127.0.0.2', headers: KEY })).toBe(403);
    expect(reached(fake, 'edge-probe')).toBe(0);
  });

  test('spoofing from an untrusted socket neither escapes a block nor blocks someone else', async () => {
    for (const h of ['X-Forwarded-For', 'X-Real-IP', 'CF-Connecting-IP', 'True-Client-IP', 'Forwarded']) {
      expect((await probe('127.0.0.2', { [h]: h === 'Forwarded' ? 'for=127.0.0.3' : '127.0.0.3' })).status).toBe(403);
      expect((await probe('127.0.0.3', { [h]: h === 'Forwarded' ? 'for=127.0.0.2' : '127.0.0.2' })).status).toBe(200);
      expect((await probe('127.0.0.3', { [h]: h === 'Forwarded' ? 'for=203.0.113.7' : '203.0.113.7' })).status).toBe(200);
    }
  });

  test('through a trusted proxy the forwarded client is judged, and its client-written left part is ignored', async () => {
    expect((await probe('127.0.0.4', { 'X-Forwarded-For': '203.0.113.7' })).status).toBe(403);
    expect((await probe('127.0.0.4', { 'X-Forwarded-For': '198.51.100.7' })).status).toBe(200);
    // a blocked client writing a clean address to the left does not get in
    expect((await probe('127.0.0.4', { 'X-Forwarded-For': '198.51.100.7, 203.0.113.7' })).status).toBe(403);
    // a clean client writing a blocked address to the left is not blocked
    expect((await probe('127.0.0.4', { 'X-Forwarded-For': '203.0.113.7, 198.51.100.7' })).status).toBe(200);
    // IPv6 and IPv4-mapped forms
    expect((await probe('127.0.0.4', { 'X-Forwarded-For': '2001:db8:bad::1' })).status).toBe(403);
    expect((await probe('127.0.0.4', { 'X-Forwarded-For': '::ffff:203.0.113.8' })).status).toBe(403);
    expect((await probe('127.0.0.4', { 'X-Forwarded-For': '2001:db8:900d::1' })).status).toBe(200);
  });

  test('blocks are audited (at most once a minute per address), without secrets', async () => {
    await probe('127.0.0.2');
    await probe('127.0.0.2');
    const logs = await flushedLogs(gw);
    const blocks = logs.filter((l) => l.audit === true && l.event === 'ip_blocked' && l.ip === '127.0.0.2');
    expect(blocks.length).toBe(1);
    expect(blocks[0].list).toBe('blacklist');
    expect(JSON.stringify(logs)).not.toContain(TEST_KEY);
  });
});

describe('whitelist', () => {
  test('a non-empty whitelist admits only its entries (comments and blank lines are not entries)', async () => {
    const gw = await startGateway(
      { upstream: fake.url, api_key: TEST_KEY },
      { files: { 'whitelist.txt': '# only these\n\n127.0.0.3\n127.0.0.8/29\n' } },
    );
    try {
      fake.clearRequests();
      const from = async (ip: string) =>
        (await hit(gw.url, '/object_info?edge-wl', { from: ip, headers: { ...KEY, 'X-Forwarded-For': '127.0.0.3' } })).status;
      expect(await from('127.0.0.3')).toBe(200);
      expect(await from('127.0.0.9')).toBe(200);
      expect(await from('127.0.0.2')).toBe(403);
      expect(await from('127.0.0.1')).toBe(403);
      expect(reached(fake, 'edge-wl')).toBe(2);
    } finally {
      await gw.close();
    }
  });

  test('a whitelist of comments only is empty: everybody may knock', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY }, { files: { 'whitelist.txt': '# nothing yet\n\n' } });
    try {
      expect((await hit(gw.url, '/object_info', { from: '127.0.0.5', headers: KEY })).status).toBe(200);
    } finally {
      await gw.close();
    }
  });
});

describe('live reload', () => {
  // The product reloads within ~1 s (fs.watch, else a 1 s stat poll); the deadline is generous so a loaded
  // machine cannot fail the test, and each wait returns as soon as the change is seen.
  const RELOAD = 15_000;
  let gw: TestGateway;
  let blacklist: string;
  let whitelist: string;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
    blacklist = gw.config.paths.blacklist;
    whitelist = gw.config.paths.whitelist;
  });
  afterAll(() => gw.close());

  const status = async (from: string) => (await hit(gw.url, '/object_info', { from, headers: KEY })).status;

  test('an edit on disk applies without a restart (watch, or the 1 s poll), in place or by rename, and deleting the file lifts it', async () => {
    expect(await status('127.0.0.6')).toBe(200);
    fs.writeFileSync(blacklist, '127.0.0.6\n');
    await waitFor(async () => (await status('127.0.0.6')) === 403, RELOAD);
    expect(await status('127.0.0.7')).toBe(200);

    // editors and scripts often write a new file and rename it over the old one
    fs.writeFileSync(`${blacklist}.new`, '127.0.0.7\n');
    fs.renameSync(`${blacklist}.new`, blacklist);
    await waitFor(async () => (await status('127.0.0.7')) === 403 && (await status('127.0.0.6')) === 200, RELOAD);

    fs.unlinkSync(blacklist);
    await waitFor(async () => (await status('127.0.0.7')) === 200, RELOAD);
  }, 60_000);

  test('a malformed line at reload keeps the last good list and logs the error with its line', async () => {
    fs.writeFileSync(blacklist, '127.0.0.6\n');
    await waitFor(async () => (await status('127.0.0.6')) === 403, RELOAD);
    fs.writeFileSync(blacklist, '127.0.0.7\nbroken line\n');
    // wait for the reload to have looked at the bad file (its error line), not a fixed time
    let err: Record<string, unknown> | undefined;
    await waitFor(
      async () => Boolean((err = (await flushedLogs(gw)).find((l) => l.level === 50 && String(l.msg).includes('malformed')))),
      RELOAD,
      100,
    );
    expect(await status('127.0.0.6')).toBe(403); // last good list still applies
    expect(await status('127.0.0.7')).toBe(200); // the bad edit did not half-apply
    expect(JSON.stringify(err)).toMatch(/blacklist\.txt:2: not an IP address or CIDR: \\"broken line\\"/);
    // fixing it applies
    fs.writeFileSync(blacklist, '127.0.0.7\n');
    await waitFor(async () => (await status('127.0.0.7')) === 403 && (await status('127.0.0.6')) === 200, RELOAD);
    fs.writeFileSync(blacklist, '');
    await waitFor(async () => (await status('127.0.0.7')) === 200, RELOAD);
  }, 60_000);

  test('the whitelist reloads too', async () => {
    fs.writeFileSync(whitelist, '127.0.0.1\n');
    await waitFor(async () => (await status('127.0.0.6')) === 403, RELOAD);
    expect(await status('127.0.0.1')).toBe(200);
    fs.writeFileSync(whitelist, '# open again\n');
    await waitFor(async () => (await status('127.0.0.6')) === 200, RELOAD);
  }, 60_000);
});

describe('GET|PUT /gateway/api/ip-lists', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY }, { files: { 'blacklist.txt': '# keep this header\n203.0.113.1\n' } });
    await registerFirstAdmin(gw);
    await registerUser(gw, 'bob');
  });
  afterAll(() => gw.close());

  test('admins read and replace the lists; the files are rewritten atomically and apply at once', async () => {
    const got = await hit(gw.url, '/gateway/api/ip-lists', { headers: KEY });
    expect(got.status).toBe(200);
    expect(got.body).toEqual({ whitelist: [], blacklist: ['203.0.113.1'] });

    const put = await hit(gw.url, '/api/gateway/api/ip-lists', {
      method: 'PUT',
      headers: KEY,
      body: { blacklist: ['127.0.0.9', '2001:db8::/32', '127.0.0.9'] },
    });
    expect(put.status).toBe(200);
    expect(put.body).toEqual({ whitelist: [], blacklist: ['127.0.0.9', '2001:db8::/32'] });
    const text = fs.readFileSync(gw.config.paths.blacklist, 'utf8');
    expect(text).toBe('# keep this header\n127.0.0.9\n2001:db8::/32\n');
    expect(fs.readdirSync(path.dirname(gw.config.paths.blacklist)).filter((n) => n.includes('.tmp'))).toEqual([]);
    // applied without waiting for the file watcher
    expect((await hit(gw.url, '/object_info', { from: '127.0.0.9', headers: KEY })).status).toBe(403);
    const { cookie } = await login(gw, 'admin');
    const viaCookie = await hit(gw.url, '/gateway/api/ip-lists', {
      method: 'PUT',
      headers: { cookie, origin: gw.url },
      body: { blacklist: [] },
    });
    expect(viaCookie.status).toBe(200);
    expect((await hit(gw.url, '/object_info', { from: '127.0.0.9', headers: KEY })).status).toBe(200);
    const logs = await flushedLogs(gw);
    expect(logs.filter((l) => l.audit === true && l.event === 'ip_lists_updated').map((l) => l.user)).toEqual(['api-key', 'admin']);
  });

  test('bad entries → 400 INVALID_BODY naming each one; nothing is written', async () => {
    const before = fs.readFileSync(gw.config.paths.blacklist, 'utf8');
    const res = await hit(gw.url, '/gateway/api/ip-lists', {
      method: 'PUT',
      headers: KEY,
      body: { whitelist: ['127.0.0.1', 'nope'], blacklist: ['10.0.0.0/8', '1.2.3.4/99', '1.2.3.4\n5.6.7.8'] },
    });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('INVALID_BODY');
    const problems = res.body.error.details.problems as { list: string; index: number }[];
    expect(problems.map((p) => [p.list, p.index])).toEqual([
      ['whitelist', 1],
      ['blacklist', 1],
      ['blacklist', 2],
    ]);
    expect(fs.readFileSync(gw.config.paths.blacklist, 'utf8')).toBe(before);
    for (const body of [[], { whitelist: 'x' }, { other: [] }, {}, 'text']) {
      const r = await hit(gw.url, '/gateway/api/ip-lists', { method: 'PUT', headers: KEY, body });
      expect([JSON.stringify(body), r.status, r.body?.error?.code]).toEqual([JSON.stringify(body), 400, 'INVALID_BODY']);
    }
  });

  test('non-admins get 403, strangers 401, cross-site cookie writes 403', async () => {
    const { cookie } = await login(gw, 'bob');
    expect((await hit(gw.url, '/gateway/api/ip-lists', { headers: { cookie } })).status).toBe(403);
    expect(
      (await hit(gw.url, '/gateway/api/ip-lists', { method: 'PUT', headers: { cookie, origin: gw.url }, body: { blacklist: [] } })).status,
    ).toBe(403);
    expect((await hit(gw.url, '/gateway/api/ip-lists')).status).toBe(401);
    const admin = await login(gw, 'admin');
    const csrf = await hit(gw.url, '/gateway/api/ip-lists', {
      method: 'PUT',
      headers: { cookie: admin.cookie, origin: 'https://evil.example' },
      body: { whitelist: ['1.1.1.1'] },
    });
    expect(csrf.status).toBe(403);
    expect(csrf.body.error.code).toBe('CSRF_REJECTED');
    expect(fs.existsSync(gw.config.paths.whitelist) ? fs.readFileSync(gw.config.paths.whitelist, 'utf8') : '').not.toContain('1.1.1.1');
  });
});

describe('createIpLists (unit)', () => {
  test('IPv6 entries and ranges; the blacklist also applies under a whitelist', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-lists-'));
    const logger = createLogger({ levels: ['silent'], file: null, stdout: false });
    fs.writeFileSync(path.join(dir, 'w.txt'), '2001:db8::/32\n::1\n10.0.0.0/8\n');
    fs.writeFileSync(path.join(dir, 'b.txt'), '2001:db8:dead::1\n10.6.6.6\n');
    const lists = createIpLists({
      paths: { whitelist: path.join(dir, 'w.txt'), blacklist: path.join(dir, 'b.txt') },
      logger,
      audit: createAudit(logger),
    });
    try {
      expect(lists.blockedBy('2001:db8::5')).toBeNull();
      expect(lists.blockedBy('::1')).toBeNull();
      expect(lists.blockedBy('::ffff:10.1.1.1')).toBeNull();
      expect(lists.blockedBy('2001:db9::5')).toBe('whitelist');
      expect(lists.blockedBy('2001:db8:dead::1')).toBe('blacklist');
      expect(lists.blockedBy('10.6.6.6')).toBe('blacklist');
      expect(lists.blockedBy('garbage')).toBe('whitelist');
    } finally {
      lists.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

/**
 * Issue 9 (identity, low): the log file is created 0600 (and an existing wider one narrowed on start); a personal
 * token that would be expired at creation is refused; the users CLI sets account emails; accounts from before
 * account ids get a stable one and keep what they owned, while a later account of a deleted name does not.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { login, PW } from './helpers/auth';
import { hit } from './helpers/edge';
import { startGateway, TEST_KEY } from './helpers/gateway';
import { runUsersCli } from '../gateway/users/cli';
import { createUserStore } from '../gateway/users/store';

const mode = (f: string) => fs.statSync(f).mode & 0o777;

describe('log file mode', () => {
  it('a new log file is 0600', async () => {
    const gw = await startGateway({ api_key: TEST_KEY });
    try {
      expect(gw.config.paths.log).toBeTruthy();
      expect(mode(gw.config.paths.log!)).toBe(0o600);
    } finally {
      await gw.close();
    }
  });

  it('an existing world-readable log file is narrowed to 0600 on start and keeps its lines', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-log-'));
    const log = path.join(dir, 'data', 'comfyui-gateway.log');
    fs.mkdirSync(path.dirname(log), { recursive: true });
    fs.writeFileSync(log, '{"old":"line"}\n', { mode: 0o644 });
    fs.chmodSync(log, 0o644);
    const gw = await startGateway({ api_key: TEST_KEY, data_dir: path.join(dir, 'data') });
    try {
      expect(gw.config.paths.log).toBe(log);
      expect(mode(log)).toBe(0o600);
      expect(fs.readFileSync(log, 'utf8').startsWith('{"old":"line"}\n')).toBe(true);
    } finally {
      await gw.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('personal token lifetimes', () => {
  it('a token that would be expired when created is refused (400 INVALID_BODY) and nothing is stored', async () => {
    const gw = await startGateway({ api_key: TEST_KEY });
    try {
      expect(
        (
          await hit(gw.url, '/gateway/api/users', {
            method: 'POST',
            headers: { 'X-API-Key': TEST_KEY },
            body: { username: 'tess', password: PW },
          })
        ).status,
      ).toBe(201);
      const { token } = await login(gw, 'tess');
      const auth = { Authorization: `Bearer ${token}` };
      for (const h of [1e-7, 1e-4, 0.0002, Number.MIN_VALUE, '1e-9']) {
        const r = await hit(gw.url, '/gateway/api/tokens', {
          method: 'POST',
          headers: auth,
          body: { name: 'instant', expires_in_hours: h },
        });
        expect([String(h), r.status, r.body.error?.code]).toEqual([String(h), 400, 'INVALID_BODY']);
        expect(r.body.error.details.fields.expires_in_hours).toBeDefined();
      }
      expect((await hit(gw.url, '/gateway/api/tokens', { headers: auth })).body.tokens).toEqual([]);
      const ok = await hit(gw.url, '/gateway/api/tokens', {
        method: 'POST',
        headers: auth,
        body: { name: 'one second', expires_in_hours: 1 / 3600 },
      });
      expect(ok.status).toBe(201);
      expect(Date.parse(ok.body.expires_at)).toBeGreaterThan(Date.now() - 1000);
    } finally {
      await gw.close();
    }
  });
});

describe('account ids and emails in the store and the CLI', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-ids-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const cli = async (args: string[], stdin = '') => {
    const { Readable, Writable } = await import('node:stream');
    let out = '';
    let err = '';
    const sink = (f: (s: string) => void) => new Writable({ write: (c, _e, cb) => (f(String(c)), cb()) }) as unknown as NodeJS.WriteStream;
    const code = await runUsersCli([...args, '--data-dir', path.join(dir, 'data')], {
      stdin: Readable.from([stdin]) as unknown as NodeJS.ReadStream,
      stdout: sink((s) => (out += s)),
      stderr: sink((s) => (err += s)),
      cwd: dir,
      env: {},
    });
    return { code, out, err };
  };

  it('users CLI: add --email, email NAME ADDR|-, list shows it; duplicates and bad addresses are refused', async () => {
    expect((await cli(['add', 'kim', '--email', 'Kim@Example.com'], `${PW}\n`)).code).toBe(0);
    expect((await cli(['list'])).out).toMatch(/^kim\tuser\tenabled\t-\t\S+\tkim@example\.com$/m);
    const dup = await cli(['add', 'lou', '--email', 'KIM@example.com'], `${PW}\n`);
    expect(dup.code).not.toBe(0);
    expect((await cli(['add', 'lou', '--email', 'not an email'], `${PW}\n`)).code).toBe(2);
    expect((await cli(['add', 'lou'], `${PW}\n`)).code).toBe(0);
    const taken = await cli(['email', 'lou', 'kim@example.com']);
    expect([taken.code, taken.err]).toEqual([1, expect.stringContaining('EMAIL_EXISTS')]);
    expect((await cli(['email', 'kim', '-'])).code).toBe(0);
    expect((await cli(['email', 'lou', 'kim@example.com'])).code).toBe(0);
    const list = (await cli(['list'])).out;
    expect(list).toMatch(/^kim\t.*\t-$/m);
    expect(list).toMatch(/^lou\t.*\tkim@example\.com$/m);
  });

  it('accounts from before ids get a stable id and keep their name-keyed records; a later account of a deleted name gets neither', async () => {
    const file = path.join(dir, 'users_db.json');
    const legacy = (username: string) => ({
      username,
      role: 'user',
      password_hash: '!',
      disabled: false,
      permissions: [],
      created_at: '2026-01-01T00:00:00.000Z',
      tokens_valid_after: 0,
    });
    fs.writeFileSync(file, JSON.stringify({ version: 1, users: [legacy('old'), legacy('gone')], tokens: [], revoked: [] }), {
      mode: 0o600,
    });
    const a = await createUserStore({ file });
    const b = await createUserStore({ file }); // a second reader (the CLI) before anything was written
    const id = a.get('old')!.id;
    expect(id).toMatch(/^acct-[0-9a-f]{32}$/);
    expect(b.get('old')!.id).toBe(id);
    expect(a.accounts.keyOf('old')).toBe('old');
    expect(a.accounts.nameOf('old')).toBe('old');
    await a.remove('gone');
    expect(a.accounts.nameOf('gone')).toBeUndefined();
    const fresh = await a.create({ username: 'gone', password_hash: '!', role: 'user' });
    expect(fresh.id).not.toBe(id);
    expect(a.accounts.keyOf('gone')).toBe(fresh.id);
    expect(a.accounts.nameOf(fresh.id)).toBe('gone');
    // records kept under the bare name belonged to the deleted account, not to the new one
    expect(a.accounts.nameOf('gone')).toBeUndefined();
    // non-accounts (the static key's principal) are their own key
    expect(a.accounts.keyOf('api-key')).toBe('api-key');
    expect(a.accounts.nameOf('api-key')).toBe('api-key');
    await a.flush();
    const c = await createUserStore({ file });
    expect(c.get('old')!.id).toBe(id);
    expect(c.get('gone')!.id).toBe(fresh.id);
  });
});

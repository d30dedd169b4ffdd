import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeFileAtomic } from '../gateway/users/atomicFile';
import { createUserStore, parseUsersFile, UserStoreError } from '../gateway/users/store';

const ROOT = path.resolve(__dirname, '..');
let dir: string;
let file: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-store-'));
  file = path.join(dir, 'data', 'users_db.json');
});
afterEach(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

const HASH = '$2b$04$' + 'a'.repeat(53);
const user = (username: string, role: 'admin' | 'user' = 'user') => ({ username, password_hash: HASH, role });
const readFile = () => JSON.parse(fs.readFileSync(file, 'utf8'));

test('creates a schema-versioned file, mode 0600, in a 0700 directory', async () => {
  const store = await createUserStore({ file });
  await store.create(user('alice', 'admin'));
  expect(readFile()).toEqual({
    version: 1,
    users: [expect.objectContaining({ username: 'alice', role: 'admin', disabled: false, permissions: [], password_hash: HASH })],
    tokens: [],
    revoked: [],
    setup: { completed_at: expect.any(String), first_admin: 'alice' },
  });
  expect(fs.statSync(file).mode & 0o777).toBe(0o600);
  expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
  // A file made too open by hand is tightened when opened.
  fs.chmodSync(file, 0o644);
  await createUserStore({ file });
  expect(fs.statSync(file).mode & 0o777).toBe(0o600);
});

test('100 parallel creates are all persisted, in a handful of coalesced writes', async () => {
  const store = await createUserStore({ file });
  const renames = jest.spyOn(fs.promises, 'rename');
  await Promise.all(Array.from({ length: 100 }, (_, i) => store.create(user(`u${i}`))));
  const writes = renames.mock.calls.filter(([, to]) => to === file).length;
  expect(writes).toBeGreaterThanOrEqual(1);
  expect(writes).toBeLessThan(10);
  expect(readFile().users).toHaveLength(100);
  const reopened = await createUserStore({ file });
  expect(reopened.count()).toBe(100);
});

test('USER_EXISTS, NOT_FOUND and LAST_ADMIN are decided synchronously, before any write', async () => {
  const store = await createUserStore({ file });
  const both = await Promise.allSettled([store.create(user('dup')), store.create(user('dup'))]);
  expect(both.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
  expect((both.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason).toMatchObject({ status: 409, code: 'USER_EXISTS' });
  await expect(store.update('nobody', { role: 'admin' })).rejects.toMatchObject({ status: 404, code: 'NOT_FOUND' });
  await expect(store.remove('nobody')).rejects.toMatchObject({ status: 404 });

  await store.create(user('root', 'admin'));
  await expect(store.remove('root')).rejects.toMatchObject({ status: 409, code: 'LAST_ADMIN' });
  await expect(store.update('root', { disabled: true })).rejects.toMatchObject({ code: 'LAST_ADMIN' });
  await expect(store.update('root', { role: 'user' })).rejects.toMatchObject({ code: 'LAST_ADMIN' });
  // Two admins demoted at the same time: exactly one succeeds.
  await store.create(user('root2', 'admin'));
  const race = await Promise.allSettled([store.update('root', { role: 'user' }), store.update('root2', { role: 'user' })]);
  expect(race.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
  expect(store.list().filter((u) => u.role === 'admin')).toHaveLength(1);
  // Records handed out are copies: mutating one changes nothing.
  const copy = store.get('dup')!;
  copy.role = 'admin';
  copy.permissions.push('x');
  expect(store.get('dup')).toMatchObject({ role: 'user', permissions: [] });
});

test('password change and disable move tokens_valid_after (ms) and drop personal tokens; revocations persist and prune', async () => {
  let clock = 1_700_000_000_000;
  const store = await createUserStore({ file, now: () => clock });
  await store.create(user('ann'));
  expect(store.get('ann')!.tokens_valid_after).toBe(clock + 1);
  const tok = {
    id: 't1',
    username: 'ann',
    name: 'n',
    prefix: 'cgw_abcdefgh',
    sha256: 'f'.repeat(64),
    created_at: new Date(clock).toISOString(),
    expires_at: null,
    last_used_at: null,
  };
  await store.tokens.add(tok);
  expect(store.tokens.findBySha256('f'.repeat(64))).toMatchObject({ id: 't1' });
  clock += 5000;
  await store.update('ann', { permissions: ['download_models'] });
  expect(store.tokens.list('ann')).toHaveLength(1); // other changes keep tokens
  await store.update('ann', { password_hash: HASH.replace('a', 'b') });
  expect(store.get('ann')!.tokens_valid_after).toBe(clock + 1);
  expect(store.tokens.list('ann')).toEqual([]);
  expect(store.tokens.findBySha256('f'.repeat(64))).toBeUndefined();

  await store.revocations.revoke('old', Math.floor(clock / 1000) + 10);
  await store.revocations.revoke('keep', Math.floor(clock / 1000) + 3600);
  expect(store.revocations.isRevoked('old')).toBe(true);
  clock += 60_000;
  await store.revocations.revoke('new', Math.floor(clock / 1000) + 3600);
  expect(readFile().revoked.map((r: { jti: string }) => r.jti)).toEqual(['keep', 'new']);
  const reopened = await createUserStore({ file, now: () => clock });
  expect(reopened.revocations.isRevoked('keep')).toBe(true);
  expect(reopened.revocations.isRevoked('unknown')).toBe(false);
});

test('a corrupt, foreign or newer file stops start-up and is left untouched', async () => {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  for (const [content, why] of [
    ['{"version":1,"users":[', /not valid JSON/],
    ['{"users":{"alice":{"password":"x"}}}', /not a comfyui-gateway users file/],
    ['{"version":2,"users":[],"tokens":[],"revoked":[]}', /newer/],
    ['{"version":1,"users":[{"username":"a"}],"tokens":[],"revoked":[]}', /users\.0/],
  ] as const) {
    fs.writeFileSync(file, content);
    const err = await createUserStore({ file }).catch((e) => e);
    expect(err).toBeInstanceOf(UserStoreError);
    expect(err.message).toMatch(why);
    expect(fs.readFileSync(file, 'utf8')).toBe(content);
  }
  fs.writeFileSync(file, '  \n');
  expect((await createUserStore({ file })).count()).toBe(0);
});

test("another process's write (the users CLI) is picked up on the next read", async () => {
  const gateway = await createUserStore({ file });
  await gateway.create(user('first', 'admin'));
  const cli = await createUserStore({ file });
  await cli.create(user('from-cli'));
  await cli.update('first', { permissions: ['download_models'] });
  expect(gateway.get('from-cli')).toBeDefined();
  expect(gateway.get('first')!.permissions).toEqual(['download_models']);
  // And the gateway's next write keeps the CLI's user.
  await gateway.create(user('later'));
  expect(readFile().users.map((u: { username: string }) => u.username)).toEqual(['first', 'from-cli', 'later']);
});

test('writeFileAtomic leaves the old content when the write fails, and no temp file', async () => {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await writeFileAtomic(file, 'old');
  jest.spyOn(fs.promises, 'rename').mockRejectedValueOnce(Object.assign(new Error('disk full'), { code: 'ENOSPC' }));
  await expect(writeFileAtomic(file, 'new')).rejects.toThrow('disk full');
  expect(fs.readFileSync(file, 'utf8')).toBe('old');
  expect(fs.readdirSync(path.dirname(file))).toEqual(['users_db.json']);
});

test('kill -9 in the middle of a write storm never leaves a truncated or unparsable file, nor loses an acknowledged write', async () => {
  const kills = 6;
  for (let round = 0; round < kills; round++) {
    const child = spawn(process.execPath, [path.join(ROOT, 'tests/helpers/storeStorm.js'), file, `r${round}`], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<NodeJS.Signals | null>((r) => child.on('exit', (_c, sig) => r(sig)));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`storm did not start: ${err}`)), 15000);
      const check = () => {
        if (/ack \d+/.test(out)) {
          clearTimeout(t);
          child.stdout.off('data', check);
          resolve();
        }
      };
      child.stdout.on('data', check);
      void exited.then(() => reject(new Error(`storm exited early: ${err}`)));
    });
    await new Promise((r) => setTimeout(r, 30 + Math.floor(Math.random() * 120)));
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');

    const acked = [...out.matchAll(/ack (\d+)/g)].map((m) => `r${round}-${m[1]}`);
    expect(acked.length).toBeGreaterThan(0);
    const text = fs.readFileSync(file, 'utf8');
    const parsed = parseUsersFile(file, text); // throws on anything truncated or malformed
    const names = new Set(parsed.users.map((u) => u.username));
    for (const a of acked) expect(names.has(a)).toBe(true);
  }
  // The store opens what the storms left, whatever temp files a kill stranded next to it.
  const store = await createUserStore({ file });
  expect(store.count()).toBeGreaterThan(kills);
}, 60_000);

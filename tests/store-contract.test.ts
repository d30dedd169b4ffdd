import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRevocations, type Invalidation, type Revocations } from '../gateway/auth/revocations';
import type { Logger } from '../gateway/log';
import { createLedger, type Ledger, type PromptRecord } from '../gateway/proxy/isolation/ledger';
import { openShared, type SharedStore } from '../gateway/store/compose';
import { createPgUserStore } from '../gateway/store/pgUsers';
import { createUserStore, type GatewayUserStore } from '../gateway/users/store';
import { createTestDatabase, eventually, type TestDatabase } from './helpers/pg';

/**
 * ONE contract for every user store: the embedded file store (users_db.json) and the PostgreSQL store run the same
 * cases. "A second store" is the users CLI next to a gateway for the file store, and another replica for PostgreSQL.
 */
interface Backend {
  open(opts?: { now?: () => number; revocations?: Revocations }): Promise<GatewayUserStore>;
  cleanup(): Promise<void>;
}

const HF_KEY = Buffer.alloc(32, 7);

const backends: [string, () => Promise<Backend>][] = [
  [
    'file',
    async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-contract-'));
      const file = path.join(dir, 'data', 'users_db.json');
      const opened: GatewayUserStore[] = [];
      return {
        open: async (o = {}) => {
          const s = await createUserStore({ file, ...o });
          opened.push(s);
          return s;
        },
        async cleanup() {
          for (const s of opened) await s.flush();
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  ],
  [
    'postgres',
    async () => {
      const db: TestDatabase = await createTestDatabase();
      const shared: SharedStore[] = [];
      return {
        open: async (o = {}) => {
          const s = await openShared(db.url, undefined, HF_KEY);
          shared.push(s);
          return createPgUserStore({ pool: s.pool, feed: s.feed, ...o });
        },
        async cleanup() {
          for (const s of shared) {
            await s.feed.close();
            await s.pool.end();
          }
          await db.drop();
        },
      };
    },
  ],
];

const HASH = '$2b$04$' + 'a'.repeat(53);
const user = (username: string, role: 'admin' | 'user' = 'user', email?: string) => ({ username, password_hash: HASH, role, email });
const token = (id: string, username: string, sha: string) => ({
  id,
  username,
  name: 'n',
  prefix: 'cgw_abcdefgh',
  sha256: sha.repeat(64),
  created_at: new Date().toISOString(),
  expires_at: null,
  last_used_at: null,
});

describe.each(backends)('%s store', (_name, make) => {
  let backend: Backend;
  beforeEach(async () => {
    backend = await make();
  });
  afterEach(async () => {
    await backend.cleanup();
  });

  test('creates users with ids, refuses duplicates (also raced), and survives a reopen', async () => {
    const store = await backend.open();
    const both = await Promise.allSettled([store.create(user('dup')), store.create(user('dup'))]);
    expect(both.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
    expect((both.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason).toMatchObject({ status: 409, code: 'USER_EXISTS' });
    const admin = await store.create(user('root', 'admin', 'Root@Example.com'));
    expect(admin).toMatchObject({ username: 'root', role: 'admin', email: 'root@example.com', disabled: false, permissions: [] });
    expect(admin.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(store.count()).toBe(2);
    expect(store.hasAdmin()).toBe(true);
    expect(store.setupInfo()).toEqual({ completed_at: admin.created_at, first_admin: 'root' });
    expect(store.byEmail('ROOT@example.com')?.username).toBe('root');
    await expect(store.create(user('other', 'user', 'root@example.com'))).rejects.toMatchObject({ status: 409, code: 'EMAIL_EXISTS' });
    expect(store.get('other')).toBeUndefined();
    // Records handed out are copies.
    const copy = store.get('dup')!;
    copy.role = 'admin';
    copy.permissions.push('x');
    expect(store.get('dup')).toMatchObject({ role: 'user', permissions: [] });
    await store.flush();
    const again = await backend.open();
    expect(again.list().map((u) => u.username)).toEqual(['dup', 'root']);
    expect(again.get('root')).toEqual(store.get('root'));
    expect(again.accounts.keyOf('root')).toBe(admin.id);
    expect(again.accounts.nameOf(admin.id)).toBe('root');
    expect(again.accounts.nameOf('api-key')).toBe('api-key');
  });

  test('NOT_FOUND and LAST_ADMIN, also when two admins are demoted at once', async () => {
    const store = await backend.open();
    await expect(store.update('nobody', { role: 'admin' })).rejects.toMatchObject({ status: 404, code: 'NOT_FOUND' });
    await expect(store.remove('nobody')).rejects.toMatchObject({ status: 404 });
    await store.create(user('root', 'admin'));
    await expect(store.remove('root')).rejects.toMatchObject({ status: 409, code: 'LAST_ADMIN' });
    await expect(store.update('root', { disabled: true })).rejects.toMatchObject({ code: 'LAST_ADMIN' });
    await expect(store.update('root', { role: 'user' })).rejects.toMatchObject({ code: 'LAST_ADMIN' });
    await store.create(user('root2', 'admin'));
    const race = await Promise.allSettled([store.update('root', { role: 'user' }), store.update('root2', { role: 'user' })]);
    expect(race.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(store.list().filter((u) => u.role === 'admin')).toHaveLength(1);
  });

  test('password change and disable void tokens (ms clock); personal tokens add, find, remove; removal drops them', async () => {
    let clock = 1_700_000_000_000;
    const events: Invalidation[] = [];
    const bus = createRevocations();
    bus.on((e) => events.push(e));
    const store = await backend.open({ now: () => clock, revocations: bus });
    const removed: string[] = [];
    store.onRemoved((name) => removed.push(name));
    await store.create(user('admin0', 'admin'));
    await store.create(user('ann'));
    expect(store.get('ann')!.tokens_valid_after).toBe(clock + 1);
    await store.tokens.add(token('t1', 'ann', 'f'));
    await expect(store.tokens.add(token('t9', 'ghost', 'e'))).rejects.toMatchObject({ status: 404 });
    expect(store.tokens.findBySha256('f'.repeat(64))).toMatchObject({ id: 't1', username: 'ann' });
    expect(store.tokens.list('ann')).toHaveLength(1);
    clock += 5000;
    await store.update('ann', { permissions: ['download_models'] });
    expect(store.tokens.list('ann')).toHaveLength(1);
    await store.update('ann', { password_hash: HASH.replace('a', 'b') });
    expect(store.get('ann')!.tokens_valid_after).toBe(clock + 1);
    expect(store.tokens.findBySha256('f'.repeat(64))).toBeUndefined();
    expect(events).toContainEqual(expect.objectContaining({ kind: 'user', username: 'ann', reason: 'password' }));
    await store.tokens.add(token('t2', 'ann', 'd'));
    expect(await store.tokens.remove('ann', 't2')).toBe(true);
    expect(await store.tokens.remove('ann', 't2')).toBe(false);
    expect(events).toContainEqual({ kind: 'token', tokenId: 't2' });
    await store.tokens.add(token('t3', 'ann', 'c'));
    await store.remove('ann');
    expect(store.get('ann')).toBeUndefined();
    expect(store.tokens.findBySha256('c'.repeat(64))).toBeUndefined();
    expect(removed).toEqual(['ann']);
    expect(events).toContainEqual(expect.objectContaining({ kind: 'user', username: 'ann', reason: 'deleted' }));
    // A later account of the same name is another account.
    const again = await store.create(user('ann'));
    expect(store.tokens.list('ann')).toEqual([]);
    expect(store.accounts.nameOf(again.id)).toBe('ann');
  });

  test('revocations persist until their expiry', async () => {
    let clock = 1_700_000_000_000;
    const store = await backend.open({ now: () => clock });
    await store.revocations.revoke('old', Math.floor(clock / 1000) + 10);
    await store.revocations.revoke('keep', Math.floor(clock / 1000) + 3600);
    expect(store.revocations.isRevoked('old')).toBe(true);
    clock += 60_000;
    await store.revocations.revoke('new', Math.floor(clock / 1000) + 3600);
    await store.flush();
    const reopened = await backend.open({ now: () => clock });
    expect(reopened.revocations.isRevoked('keep')).toBe(true);
    expect(reopened.revocations.isRevoked('new')).toBe(true);
    expect(reopened.revocations.isRevoked('unknown')).toBe(false);
  });

  test('a second store (the CLI, another replica) sees every change, and its invalidations are announced here', async () => {
    const events: Invalidation[] = [];
    const bus = createRevocations();
    bus.on((e) => events.push(e));
    const here = await backend.open({ revocations: bus });
    const removed: string[] = [];
    here.onRemoved((name) => removed.push(name));
    await here.create(user('first', 'admin'));
    await here.create(user('bob'));
    await here.flush();
    const there = await backend.open();
    await there.create(user('from-there'));
    await there.update('first', { permissions: ['download_models'] });
    await eventually(() => here.get('from-there') && here.get('first')!.permissions.length === 1, 5000, 'the change seen here');
    await there.update('bob', { disabled: true });
    // The file store picks another process's write up on its next read; a replica hears it by itself.
    const heard = (reason: string) => () =>
      here.count() >= 0 && events.some((e) => e.kind === 'user' && e.username === 'bob' && e.reason === reason);
    await eventually(heard('disabled'), 5000, 'disable heard');
    await there.remove('bob');
    await eventually(() => !here.get('bob') && removed.includes('bob'), 5000, 'removal heard');
    // And this store's next write keeps the other's user.
    await here.create(user('later'));
    await here.flush();
    const third = await backend.open();
    expect(third.list().map((u) => u.username)).toEqual(['first', 'from-there', 'later']);
  });
});

/** The prompt ledger's persistence: prompt_ledger.json, or documents in PostgreSQL — the same cases. */
interface LedgerBackend {
  open(): Promise<Ledger>;
  cleanup(): Promise<void>;
}
const silent = { info: () => undefined, warn: () => undefined, error: () => undefined } as unknown as Logger;
const ledgerBackends: [string, () => Promise<LedgerBackend>][] = [
  [
    'file',
    async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-ledger-'));
      return {
        open: async () => createLedger({ file: path.join(dir, 'prompt_ledger.json'), logger: silent }),
        cleanup: async () => fs.rmSync(dir, { recursive: true, force: true }),
      };
    },
  ],
  [
    'postgres',
    async () => {
      const db = await createTestDatabase();
      const shared: SharedStore[] = [];
      return {
        open: async () => {
          const s = await openShared(db.url, undefined, null);
          shared.push(s);
          const docs = s.docs.collection<PromptRecord>('ledger');
          return createLedger({ file: '/nonexistent/ledger.json', logger: silent, shared: { initial: await docs.all(), docs } });
        },
        async cleanup() {
          for (const s of shared) {
            await s.feed.close();
            await s.pool.end();
          }
          await db.drop();
        },
      };
    },
  ],
];

describe.each(ledgerBackends)('%s ledger', (_name, make) => {
  let backend: LedgerBackend;
  beforeEach(async () => {
    backend = await make();
  });
  afterEach(async () => {
    await backend.cleanup();
  });

  test('records owners, upstream ids and files, and keeps them across a reopen', async () => {
    const l = await backend.open();
    l.add({ id: 'p1', owner: 'alice', clientId: 'tab', upstreamClientId: 'up1' });
    l.add({ id: 'p2', owner: 'bob', clientId: '', upstreamClientId: 'up2' });
    l.add({ id: 'p3', owner: 'alice', clientId: 'tab', upstreamClientId: 'up1' });
    l.setUpstreamId('p2', 'comfy-2');
    l.addFiles('p1', [{ type: 'output', subfolder: 'alice', filename: 'a.png' }]);
    l.remove('p3');
    await l.close();
    const again = await backend.open();
    expect(again.size).toBe(2);
    expect(again.idsOf('alice')).toEqual(['p1']);
    expect(again.owner('p2')).toBe('bob');
    expect(again.byUpstreamId('comfy-2')).toBe('p2');
    expect(again.get('p1')).toMatchObject({ owner: 'alice', clientId: 'tab', upstreamClientId: 'up1' });
    expect(again.ownsFile('alice', { type: 'output', subfolder: 'alice', filename: 'a.png' })).toBe(true);
    expect(again.ownsFile('bob', { type: 'output', subfolder: 'alice', filename: 'a.png' })).toBe(false);
    expect(again.get('p3')).toBeUndefined();
    await again.close();
  });
});

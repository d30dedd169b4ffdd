import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import request from 'supertest';
import { composeGateway } from '../gateway/compose';
import { ConfigError, loadConfig } from '../gateway/config/load';
import { openShared } from '../gateway/store/compose';
import { migrate } from '../gateway/store/pg';
import { MIGRATIONS } from '../gateway/store/migrations';
import { createPgUserStore } from '../gateway/store/pgUsers';
import { createRevocations, type Invalidation } from '../gateway/auth/revocations';
import { hfTokenPersistence, isolationShared } from '../gateway/store/parts';
import { createUploadList } from '../gateway/proxy/isolation/uploadList';
import { login, PW, registerFirstAdmin, registerUser } from './helpers/auth';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { runGateway } from './helpers/child';
import { startGateway, type TestGateway } from './helpers/gateway';
import { createTestDatabase, eventually, type TestDatabase } from './helpers/pg';
import { startTcpProxy, type TcpProxy } from './helpers/tcpProxy';

/** The gateway on PostgreSQL, end to end: two gateways on one database, and the database going away. */
const HF_KEY_HEX = 'ab'.repeat(32);
const ENV = { COMFYUI_GATEWAY_HF_TOKEN_KEY: HF_KEY_HEX };

let db: TestDatabase;
let relay: TcpProxy;
let fake: FakeComfy;
let a: TestGateway;
let b: TestGateway;
let sql: pg.Client;

beforeAll(async () => {
  db = await createTestDatabase();
  relay = await startTcpProxy('127.0.0.1', Number(new URL(db.url).port || 5432));
  fake = await startFakeComfy();
  const config = { upstream: fake.url, store: { kind: 'postgres', url: relay.via(db.url) } };
  a = await startGateway(config, { env: ENV });
  b = await startGateway({ upstream: fake.url, store: { kind: 'postgres', url: db.url } }, { env: ENV });
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});
afterAll(async () => {
  await a?.close();
  await b?.close();
  await sql?.end();
  await fake?.close();
  await relay?.close();
  await db?.drop();
});

const users = async () =>
  (await sql.query<{ username: string }>('SELECT username FROM gw_users ORDER BY username')).rows.map((r) => r.username);

test('users live in PostgreSQL, not in data_dir; a session minted on one gateway works on the other, and its logout too', async () => {
  await registerFirstAdmin(a);
  await registerUser(a, 'bob');
  expect(await users()).toEqual(['admin', 'bob']);
  expect(fs.existsSync(a.config.paths.usersDb)).toBe(false);
  // The other gateway knows bob at once and accepts a session signed by the first (the key is shared).
  const s = await login(b, 'bob');
  const onA = await request(a.url).get('/api/queue').set('authorization', `Bearer ${s.token}`);
  expect(onA.status).toBe(200);
  const out = await request(a.url).post('/logout').set('authorization', `Bearer ${s.token}`);
  expect(out.status).toBeLessThan(300);
  await eventually(
    async () => (await request(b.url).get('/api/queue').set('authorization', `Bearer ${s.token}`)).status === 401,
    1000,
    'refused on B',
  );
  const refused = await request(b.url).get('/api/queue').set('authorization', `Bearer ${s.token}`);
  expect(refused.body.error.code).toBe('TOKEN_REVOKED');
  // The audit trail of both gateways is in one table.
  await eventually(
    async () => {
      const r = await sql.query<{ event: string; username: string }>('SELECT event, username FROM gw_audit ORDER BY id');
      const seen = r.rows.map((x) => `${x.event}:${x.username}`);
      return seen.includes('register:admin') && seen.includes('login_success:bob') && seen.includes('logout:bob');
    },
    5000,
    'audit rows',
  );
});

test('PostgreSQL unreachable: 503 STORE_UNAVAILABLE, nothing proxied, nothing half-written; back when it is', async () => {
  const s = await login(a, 'bob');
  const before = fake.requests.length;
  relay.block();
  const res = await eventually(
    async () => {
      const r = await request(a.url).get('/api/queue').set('authorization', `Bearer ${s.token}`);
      return r.status === 503 ? r : null;
    },
    5000,
    '503 while the database is away',
  );
  expect(res!.body.error.code).toBe('STORE_UNAVAILABLE');
  const reg = await request(a.url)
    .post('/register')
    .send({ new_user_username: 'carol', new_user_password: PW, username: 'admin', password: PW });
  expect(reg.status).toBe(503);
  expect(reg.body.error.code).toBe('STORE_UNAVAILABLE');
  const signIn = await request(a.url).post('/login').send({ username: 'bob', password: PW });
  expect(signIn.status).toBe(503);
  // Refused, not proxied: ComfyUI saw nothing of these.
  expect(fake.requests.slice(before).filter((r) => r.rawPath.includes('queue'))).toEqual([]);
  relay.unblock();
  await eventually(
    async () => (await request(a.url).get('/api/queue').set('authorization', `Bearer ${s.token}`)).status === 200,
    10_000,
    'back',
  );
  expect(await users()).toEqual(['admin', 'bob']);
});

test('start-up without the HF token key is refused with a message naming it', async () => {
  const dir = fs.mkdtempSync(path.join(a.dir, 'nokey-'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ data_dir: './d', store: { kind: 'postgres', url: db.url } }));
  const cfg = loadConfig(['--config', path.join(dir, 'config.json')], {}, dir);
  const err = await composeGateway(cfg, { stdout: false, env: {} }).catch((e) => e);
  expect(err).toBeInstanceOf(ConfigError);
  expect(err.message).toMatch(/COMFYUI_GATEWAY_HF_TOKEN_KEY/);
  // And a store url that is not postgres is a configuration error.
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ store: { kind: 'postgres' } }));
  expect(() => loadConfig(['--config', path.join(dir, 'config.json')], {}, dir)).toThrow(/store.*url/);
});

test('HF tokens are stored encrypted (AES-256-GCM), readable by another replica, and not under another key or account', async () => {
  const s1 = await openShared(db.url, undefined, Buffer.from(HF_KEY_HEX, 'hex'));
  const s2 = await openShared(db.url, undefined, Buffer.from(HF_KEY_HEX, 'hex'));
  const wrong = await openShared(db.url, undefined, Buffer.alloc(32, 1));
  try {
    const log = { warn: jest.fn(), error: jest.fn() } as never;
    const p1 = await hfTokenPersistence(s1, log);
    const p2 = await hfTokenPersistence(s2, log);
    const seen: string[] = [];
    p2.onRemote((u, t) => t && seen.push(`${u}:${t.access_token}`));
    const tok = { access_token: 'hf_secretAccess123', refresh_token: 'hf_refresh456', expires_at: 9e9, scope: 'x', hf_username: 'b' };
    p1.save('acct-1', tok);
    await eventually(() => seen.includes('acct-1:hf_secretAccess123'), 5000, 'the other replica hears it');
    const raw = (await sql.query("SELECT key, value::text AS v FROM gw_docs WHERE coll = 'hf_tokens'")).rows;
    expect(raw).toHaveLength(1);
    expect(raw[0].v).not.toMatch(/hf_secret|hf_refresh/);
    expect((await hfTokenPersistence(s2, log)).initial.get('acct-1')).toEqual(tok);
    expect((await hfTokenPersistence(wrong, log)).initial.size).toBe(0);
    // A sealed row moved onto another account does not open there.
    await sql.query(
      "INSERT INTO gw_docs (coll, key, value) SELECT coll, 'acct-2', value FROM gw_docs WHERE coll = 'hf_tokens' AND key = 'acct-1'",
    );
    const reread = await hfTokenPersistence(s2, log);
    expect([...reread.initial.keys()]).toEqual(['acct-1']);
  } finally {
    for (const s of [s1, s2, wrong]) {
      await s.feed.close();
      await s.pool.end();
    }
  }
});

test('two replicas recording uploads of one user at the same moment both keep theirs; a later one reads all, in the order each replica wrote them', async () => {
  const stores = [await openShared(db.url, undefined, null), await openShared(db.url, undefined, null)];
  try {
    const log = { warn: jest.fn(), error: jest.fn() } as never;
    const lists = await Promise.all(
      stores.map(async (s) => createUploadList({ file: '', logger: log, shared: (await isolationShared(s)).uploads })),
    );
    for (let i = 0; i < 5; i++) for (const [n, l] of lists.entries()) l.add('carol', `carol/r${n}-${i}.png`);
    lists[0].add('carol', 'carol/r0-0.png'); // already known: no second row
    await Promise.all(lists.map((l) => l.flush()));
    for (const l of lists) await eventually(() => l.of('carol').length === 10, 5000, 'both replicas list all ten');
    const later = createUploadList({ file: '', logger: log, shared: (await isolationShared(stores[0])).uploads });
    expect([...later.of('carol')].sort()).toEqual([...lists[0].of('carol')].sort());
    expect(later.of('carol').filter((n) => n.startsWith('carol/r1-'))).toEqual([0, 1, 2, 3, 4].map((i) => `carol/r1-${i}.png`));
    expect((await sql.query("SELECT count(*)::int AS n FROM gw_docs WHERE coll = 'uploads'")).rows[0].n).toBe(10);
  } finally {
    for (const s of stores) {
      await s.feed.close();
      await s.pool.end();
    }
  }
});

test('a PostgreSQL or Redis that cannot be reached at start-up stops the gateway with a clear message (exit 1), no password shown', async () => {
  const dir = fs.mkdtempSync(path.join(a.dir, 'unreachable-'));
  const cfg = path.join(dir, 'config.json');
  fs.writeFileSync(
    cfg,
    JSON.stringify({ port: 0, data_dir: './d', store: { kind: 'postgres', url: 'postgres://gw:s3cret@127.0.0.1:1/none' } }),
  );
  const r = await runGateway(['--config', cfg], ENV);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/cannot open the PostgreSQL store \(store\.url postgres:\/\/gw:\*\*\*@127\.0\.0\.1:1\/none\)/);
  expect(r.stderr).not.toMatch(/s3cret|^\s+at /m);
  fs.writeFileSync(cfg, JSON.stringify({ port: 0, data_dir: './d', redis: { url: 'redis://127.0.0.1:1' } }));
  const r2 = await runGateway(['--config', cfg], ENV);
  expect(r2.code).toBe(1);
  expect(r2.stderr).toMatch(/cannot reach Redis/);
});

test('replicas starting together migrate once: the advisory lock makes them take turns', async () => {
  const fresh = await createTestDatabase();
  try {
    const applied = await Promise.all([migrate(fresh.url), migrate(fresh.url), migrate(fresh.url)]);
    expect(applied.filter((a) => a.length > 0)).toHaveLength(1);
    // every migration, in name order (0003_queue_answers: ComfyUI's answers passed between replicas)
    const names = Object.keys(MIGRATIONS).sort();
    expect(names.slice(0, 3)).toEqual(['0001_initial', '0002_queue', '0003_queue_answers']);
    expect(applied.find((a) => a.length)).toEqual(names);
    const c = new pg.Client({ connectionString: fresh.url });
    await c.connect();
    const done = await c.query('SELECT name FROM gw_migrations ORDER BY name');
    await c.end();
    expect(done.rows.map((r) => r.name)).toEqual(names);
  } finally {
    await fresh.drop();
  }
});

test('what was voided elsewhere while a replica could not listen is announced there once it is back (its sockets close)', async () => {
  const cut = await startTcpProxy('127.0.0.1', Number(new URL(db.url).port || 5432));
  const hereShared = await openShared(cut.via(db.url), undefined, null);
  const thereShared = await openShared(db.url, undefined, null);
  const events: Invalidation[] = [];
  const bus = createRevocations();
  bus.on((e) => events.push(e));
  try {
    const here = await createPgUserStore({ pool: hereShared.pool, feed: hereShared.feed, revocations: bus });
    const there = await createPgUserStore({ pool: thereShared.pool, feed: thereShared.feed });
    cut.block();
    await eventually(() => !hereShared.feed.fresh(), 5000, 'feed lost');
    expect(() => here.revocations.isRevoked('gone-while-away')).toThrow(expect.objectContaining({ code: 'STORE_UNAVAILABLE' }));
    await there.revocations.revoke('gone-while-away', Math.floor(Date.now() / 1000) + 3600);
    cut.unblock();
    await eventually(() => hereShared.feed.fresh(), 10_000, 'feed back');
    expect(here.revocations.isRevoked('gone-while-away')).toBe(true);
    expect(events).toContainEqual({ kind: 'jti', jti: 'gone-while-away' });
  } finally {
    for (const s of [hereShared, thereShared]) {
      await s.feed.close();
      await s.pool.end();
    }
    await cut.close();
  }
});

/**
 * Issue 13: three gateway replicas (child processes, as `npm start` runs them) on one PostgreSQL and one Redis,
 * behind a round-robin balancer with no stickiness.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import request from 'supertest';
import { freshIp, PW, registerFirstAdmin } from './helpers/auth';
import { spawnGateway, type ChildGateway } from './helpers/child';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { createTestDatabase, eventually, type TestDatabase } from './helpers/pg';
import { startRoundRobin, type RoundRobin } from './helpers/roundRobin';
import { startTcpProxy, type TcpProxy } from './helpers/tcpProxy';
import { openSocket, type TestSocket } from './helpers/ws';

jest.setTimeout(120_000);

const ENV = { COMFYUI_GATEWAY_HF_TOKEN_KEY: '5a'.repeat(32) };
let db: TestDatabase;
let fake: FakeComfy;
let pgRelay: TcpProxy;
let redisPort: number;
let redisProc: ChildProcess | null = null;
let dir: string;
const replicas: ChildGateway[] = [];
let lb: RoundRobin;
let sql: pg.Client;
const sockets: TestSocket[] = [];

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });

/** A Redis server of this test's own (so it can be restarted), on a spare port. */
async function startRedis(): Promise<void> {
  redisProc = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  await eventually(
    () =>
      new Promise<boolean>((resolve) => {
        const c = net.connect(redisPort, '127.0.0.1', () => {
          c.end();
          resolve(true);
        });
        c.on('error', () => resolve(false));
      }),
    10_000,
    'redis-server listening',
  );
}
async function stopRedis(): Promise<void> {
  const p = redisProc;
  redisProc = null;
  if (!p || p.exitCode !== null) return;
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await gone;
}

beforeAll(async () => {
  db = await createTestDatabase();
  fake = await startFakeComfy();
  pgRelay = await startTcpProxy('127.0.0.1', Number(new URL(db.url).port || 5432));
  redisPort = await freePort();
  await startRedis();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-replicas-'));
  for (let i = 0; i < 3; i++) {
    const rdir = path.join(dir, `r${i}`);
    fs.mkdirSync(rdir);
    // The third replica reaches PostgreSQL through a relay the test can cut.
    const url = i === 2 ? pgRelay.via(db.url) : db.url;
    const config = {
      host: '127.0.0.1',
      port: 0,
      upstream: fake.url,
      data_dir: './data',
      bcrypt_cost: 4,
      trusted_proxies: ['127.0.0.1'],
      log_levels: ['warn'],
      store: { kind: 'postgres', url },
      redis: { url: `redis://127.0.0.1:${redisPort}`, key_prefix: 'cgw-replicas:' },
    };
    fs.writeFileSync(path.join(rdir, 'config.json'), JSON.stringify(config));
    replicas.push(await spawnGateway(['--config', path.join(rdir, 'config.json')], ENV));
  }
  lb = await startRoundRobin(replicas.map((r) => r.port));
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  await registerFirstAdmin(replicas[0]);
  for (const name of ['alice', 'bob']) {
    const r = await request(replicas[1].url)
      .post('/register')
      .send({ new_user_username: name, new_user_password: PW, username: 'admin', password: PW });
    expect(r.status).toBe(201);
  }
});
afterAll(async () => {
  for (const s of sockets) s.close();
  for (const r of replicas) r.kill('SIGKILL');
  await Promise.all(replicas.map((r) => r.exited));
  await lb?.close();
  await sql?.end();
  await stopRedis();
  await pgRelay?.close();
  await fake?.close();
  await db?.drop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const signIn = async (base: string, username: string) => {
  const r = await request(base).post('/login').set('X-Forwarded-For', freshIp()).send({ username, password: PW });
  expect(r.status).toBe(200);
  return r.body.token as string;
};
const asUser = (base: string, token: string, p = '/api/queue') => request(base).get(p).set('authorization', `Bearer ${token}`);

test('every replica printed the same first-run setup code (one code for the whole deployment)', () => {
  const codes = replicas.map((r) => /setup code: ([A-Z0-9-]{19})/.exec(r.stdout() + r.stderr())?.[1]);
  expect(codes[0]).toMatch(/^[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}$/);
  expect(new Set(codes).size).toBe(1);
});

test('login on one replica, use on another, logout on a third: refused on all three within 1 s; the balancer needs no stickiness', async () => {
  const token = await signIn(replicas[0].url, 'alice');
  expect((await asUser(replicas[1].url, token)).status).toBe(200);
  for (let i = 0; i < 6; i++) expect((await asUser(lb.url, token)).status).toBe(200);
  expect(Math.min(...lb.hits)).toBeGreaterThan(0);
  const ws = await openSocket(`${replicas[1].url.replace(/^http/, 'ws')}/ws?clientId=logout-tab`, { authorization: `Bearer ${token}` });
  sockets.push(ws);
  const out = await request(replicas[2].url).post('/logout').set('authorization', `Bearer ${token}`);
  expect(out.status).toBeLessThan(300);
  const t0 = Date.now();
  await eventually(
    async () =>
      (await Promise.all(replicas.map((r) => asUser(r.url, token)))).every(
        (r) => r.status === 401 && r.body.error.code === 'TOKEN_REVOKED',
      ),
    1000,
    'refused everywhere',
  );
  expect(Date.now() - t0).toBeLessThan(1000);
  // Its socket on another replica is closed as a policy violation, within the same second.
  const closed = await Promise.race([ws.closed, new Promise<null>((r) => setTimeout(() => r(null), 1000))]);
  expect(closed?.code).toBe(1008);
});

test('lockouts are counted across replicas: failures spread by the balancer lock the address out everywhere', async () => {
  const ip = '198.51.100.77';
  for (let i = 0; i < 5; i++) {
    const r = await request(lb.url).post('/login').set('X-Forwarded-For', ip).send({ username: 'bob', password: 'wrong-password' });
    expect(r.status).toBe(401);
  }
  for (const r of replicas) {
    await eventually(
      async () => (await request(r.url).post('/login').set('X-Forwarded-For', ip).send({ username: 'bob', password: PW })).status === 429,
      5000,
      `locked on ${r.url}`,
    );
  }
});

test("a prompt queued via replica A sends its events to alice's socket held by replica B", async () => {
  const token = await signIn(replicas[0].url, 'alice');
  const ws = await openSocket(`${replicas[1].url.replace(/^http/, 'ws')}/ws?clientId=fanout-tab`, { authorization: `Bearer ${token}` });
  sockets.push(ws);
  await ws.next((f) => f.json?.type === 'status');
  const q = await request(replicas[0].url)
    .post('/api/prompt')
    .set('authorization', `Bearer ${token}`)
    .send({ prompt: sampleWorkflow('fanout'), client_id: 'fanout-tab' });
  expect(q.status).toBe(200);
  const id = q.body.prompt_id as string;
  const done = await ws.next((f) => f.json?.type === 'executing' && f.json.data.node === null && f.json.data.prompt_id === id, 15_000);
  expect(done.json.data.prompt_id).toBe(id);
  // And bob, also on B, saw none of it.
  const bobToken = await signIn(replicas[2].url, 'bob');
  const hist = await asUser(replicas[1].url, bobToken, '/history');
  expect(Object.keys(hist.body)).not.toContain(id);
  const mine = await asUser(replicas[2].url, token, '/history');
  expect(Object.keys(mine.body)).toContain(id);
});

test('PostgreSQL away from one replica: 503 STORE_UNAVAILABLE there, nothing half-written, the others unaffected', async () => {
  const token = await signIn(replicas[0].url, 'alice');
  pgRelay.block();
  const res = await eventually(
    async () => {
      const r = await asUser(replicas[2].url, token);
      return r.status === 503 ? r : null;
    },
    10_000,
    '503 on the cut replica',
  );
  expect(res!.body.error.code).toBe('STORE_UNAVAILABLE');
  const reg = await request(replicas[2].url)
    .post('/register')
    .set('X-Forwarded-For', freshIp())
    .send({ new_user_username: 'halfway', new_user_password: PW, username: 'admin', password: PW });
  expect(reg.status).toBe(503);
  expect((await asUser(replicas[0].url, token)).status).toBe(200);
  pgRelay.unblock();
  await eventually(async () => (await asUser(replicas[2].url, token)).status === 200, 15_000, 'back');
  expect((await sql.query("SELECT count(*)::int AS n FROM gw_users WHERE username = 'halfway'")).rows[0].n).toBe(0);
});

test('Redis restarted: signed-in requests keep working throughout; sign-in fails closed while it is down; locks survive', async () => {
  const token = await signIn(replicas[0].url, 'alice');
  const lockedIp = '198.51.100.77'; // locked by the lockout test above
  await stopRedis();
  for (const r of replicas) expect((await asUser(r.url, token)).status).toBe(200);
  for (const r of replicas) {
    const res = await eventually(
      async () => {
        const x = await request(r.url).post('/login').set('X-Forwarded-For', freshIp()).send({ username: 'bob', password: PW });
        return x.status === 503 ? x : null;
      },
      10_000,
      'sign-in refused without Redis',
    );
    expect(res!.body.error.code).toBe('STORE_UNAVAILABLE');
  }
  await startRedis();
  for (const r of replicas) {
    await eventually(
      async () =>
        (await request(r.url).post('/login').set('X-Forwarded-For', freshIp()).send({ username: 'bob', password: PW })).status === 200,
      15_000,
      'sign-in back',
    );
    // The lock set before the restart still holds (never an open door because Redis forgot).
    expect((await request(r.url).post('/login').set('X-Forwarded-For', lockedIp).send({ username: 'bob', password: PW })).status).toBe(429);
  }
});

test('kill -9 of a replica in the middle of a registration storm loses nothing that was acknowledged', async () => {
  const acked: string[] = [];
  let killed = false;
  const victim = replicas[1];
  const storm = Array.from({ length: 60 }, (_, i) => `storm${i}`);
  let nextIdx = 0;
  const worker = async () => {
    while (nextIdx < storm.length) {
      const name = storm[nextIdx++];
      if (!killed && acked.length >= 15) {
        killed = true;
        victim.kill('SIGKILL');
      }
      const r = await request(lb.url)
        .post('/register')
        .set('X-Forwarded-For', freshIp())
        .send({ new_user_username: name, new_user_password: PW, username: 'admin', password: PW })
        .catch(() => null);
      if (r?.status === 201) acked.push(name);
    }
  };
  await Promise.all(Array.from({ length: 6 }, worker));
  expect(killed).toBe(true);
  await victim.exited;
  expect(acked.length).toBeGreaterThan(15);
  const stored = new Set(
    (await sql.query<{ username: string }>("SELECT username FROM gw_users WHERE username LIKE 'storm%'")).rows.map((r) => r.username),
  );
  expect(acked.filter((n) => !stored.has(n))).toEqual([]);
  // The survivors know every stored user.
  const adminToken = await signIn(replicas[0].url, 'admin');
  const list = await asUser(replicas[2].url, adminToken, '/gateway/api/users');
  const names = new Set((list.body.users as { username: string }[]).map((u) => u.username));
  for (const n of stored) expect(names.has(n)).toBe(true);
});

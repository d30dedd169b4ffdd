import fs from 'node:fs';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import pg from 'pg';
import request from 'supertest';
import { runMigrateStore } from '../gateway/store/migrateStore';
import { runUsersCli } from '../gateway/users/cli';
import { login, PW, registerFirstAdmin, registerUser } from './helpers/auth';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, type TestGateway } from './helpers/gateway';
import { createTestDatabase, eventually, type TestDatabase } from './helpers/pg';

/** `comfyui-gateway migrate-store --from file --to postgres`, and `users` on PostgreSQL. */
const ENV = { COMFYUI_GATEWAY_HF_TOKEN_KEY: 'cd'.repeat(32) };
let db: TestDatabase;
let fake: FakeComfy;
let fileGw: TestGateway | null = null;
let pgGw: TestGateway | null = null;
let sql: pg.Client;
let keepDir: string;

beforeAll(async () => {
  db = await createTestDatabase();
  fake = await startFakeComfy();
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});
afterAll(async () => {
  await fileGw?.close();
  await pgGw?.close();
  await sql?.end();
  await fake?.close();
  await db?.drop();
  if (keepDir) fs.rmSync(keepDir, { recursive: true, force: true });
});

function io(stdin = '') {
  const out = new PassThrough();
  const err = new PassThrough();
  let o = '';
  let e = '';
  out.on('data', (d) => (o += d));
  err.on('data', (d) => (e += d));
  return {
    streams: {
      stdin: Readable.from([Buffer.from(stdin)]) as unknown as NodeJS.ReadStream,
      stdout: out as unknown as NodeJS.WriteStream,
      stderr: err as unknown as NodeJS.WriteStream,
    },
    out: () => o,
    err: () => e,
  };
}

test('a single-process install is copied without losing a user, token, logged-out session, ledger entry, held prompt, limit or usage', async () => {
  fileGw = await startGateway({ upstream: fake.url });
  await registerFirstAdmin(fileGw);
  await registerUser(fileGw, 'bob');
  const kept = await login(fileGw, 'bob');
  const gone = await login(fileGw, 'bob');
  expect((await request(fileGw.url).post('/logout').set('authorization', `Bearer ${gone.token}`)).status).toBeLessThan(300);
  const tok = await request(fileGw.url).post('/gateway/api/tokens').set('authorization', `Bearer ${kept.token}`).send({ name: 'script' });
  expect(tok.status).toBe(201);
  const queued = await request(fileGw.url)
    .post('/api/prompt')
    .set('authorization', `Bearer ${kept.token}`)
    .send({ prompt: sampleWorkflow() });
  expect(queued.status).toBe(200);
  const promptId = queued.body.prompt_id as string;
  await fake.waitForPrompt(promptId);
  // The queue comes along too: a limit for bob, his usage, and two prompts the gateway holds (the worker has two).
  const admin = await login(fileGw, 'admin');
  const lim = await request(fileGw.url)
    .put('/gateway/api/queue/limits/bob')
    .set('authorization', `Bearer ${admin.token}`)
    .send({ max_waiting: 10, max_running: null, per_day: 50 });
  expect(lim.status).toBe(200);
  fake.promptDelayMs = 120_000;
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) {
    const r = await request(fileGw.url)
      .post('/api/prompt')
      .set('authorization', `Bearer ${kept.token}`)
      .send({ prompt: sampleWorkflow(`m${i}`) });
    expect(r.status).toBe(200);
    ids.push(r.body.prompt_id as string);
  }
  await eventually(() => ids.filter((id) => fake.prompts.has(id)).length === 2, 10_000, 'two on the worker');
  const held = ids.filter((id) => !fake.prompts.has(id));
  // bob's upload (data_dir/uploads.json) and the model roots a run learned (data_dir/model_download_roots.json)
  const up = await request(fileGw.url)
    .post('/upload/image')
    .set('authorization', `Bearer ${kept.token}`)
    .attach('image', Buffer.from('\x89PNG\r\n\x1a\n'), { filename: 'moved.png', contentType: 'image/png' });
  expect([up.status, up.body.subfolder]).toEqual([200, 'bob']);
  const dir = fileGw.dir;
  fs.writeFileSync(path.join(dir, 'data', 'model_download_roots.json'), JSON.stringify(['/models/checkpoints', '/models/loras']));
  // Keep the files: the gateway is stopped, then its folder is what migrate-store reads.
  await fileGw.shutdown(2000);
  keepDir = dir;
  fileGw = null;

  const cfg = path.join(dir, 'config.json');
  const run = io();
  const code = await runMigrateStore(['--from', 'file', '--to', 'postgres', '--config', cfg, '--url', db.url], {
    ...run.streams,
    cwd: dir,
    env: ENV,
  });
  expect(run.err()).toBe('');
  expect(code).toBe(0);
  expect(run.out()).toMatch(/copied 2 users, 1 tokens, 1 logged-out sessions, 5 ledger entries/);
  expect(run.out()).toMatch(/1 uploads, 2 model roots, 2 held prompts, 1 user limits, 1 usage rows/);
  const docs = async (coll: string) => (await sql.query('SELECT value FROM gw_docs WHERE coll = $1', [coll])).rows.map((r) => r.value);
  expect(await docs('uploads')).toEqual([{ user: 'bob', name: 'bob/moved.png' }]);
  expect(await docs('download_roots')).toEqual([['/models/checkpoints', '/models/loras']]);
  expect((await sql.query('SELECT id FROM gw_queue_held ORDER BY seq')).rows.map((r) => r.id)).toEqual(held);
  expect((await sql.query('SELECT sum(prompts)::int AS n FROM gw_queue_usage')).rows[0].n).toBe(5);
  expect((await sql.query('SELECT value FROM gw_queue_limits')).rows.map((r) => r.value)).toEqual([
    { max_waiting: 10, max_running: null, per_day: 50 },
  ]);

  // A second copy into the now non-empty database is refused, and changes nothing.
  const again = io();
  expect(
    await runMigrateStore(['--from', 'file', '--to', 'postgres', '--config', cfg, '--url', db.url], {
      ...again.streams,
      cwd: dir,
      env: ENV,
    }),
  ).toBe(1);
  expect(again.err()).toMatch(/STORE_NOT_EMPTY/);
  expect((await sql.query('SELECT count(*)::int AS n FROM gw_users')).rows[0].n).toBe(2);

  // The same install on PostgreSQL: the session still works (the key came along), the logged-out one does not,
  // the personal token works, and bob's prompt is still his.
  const conf = JSON.parse(fs.readFileSync(cfg, 'utf8'));
  pgGw = await startGateway({ ...conf, data_dir: path.join(dir, 'data-pg'), store: { kind: 'postgres', url: db.url } }, { env: ENV });
  const ok = await request(pgGw.url).get('/history').set('authorization', `Bearer ${kept.token}`);
  expect(ok.status).toBe(200);
  expect(Object.keys(ok.body)).toContain(promptId);
  const refused = await request(pgGw.url).get('/history').set('authorization', `Bearer ${gone.token}`);
  expect(refused.status).toBe(401);
  expect(refused.body.error.code).toBe('TOKEN_REVOKED');
  expect((await request(pgGw.url).get('/api/queue').set('authorization', `Bearer ${tok.body.token}`)).status).toBe(200);
  const adminSession = await login(pgGw, 'admin');
  const adminHistory = await request(pgGw.url).get('/history').set('authorization', `Bearer ${adminSession.token}`);
  expect(Object.keys(adminHistory.body)).toContain(promptId);
  // the queue: bob's limit and usage, and his held prompts, which now run from PostgreSQL, each once
  const aq = await request(pgGw.url).get('/gateway/api/queue').set('authorization', `Bearer ${adminSession.token}`);
  expect(aq.body.limits.users.bob).toEqual({ max_waiting: 10, max_running: null, per_day: 50 });
  const usage = await request(pgGw.url).get('/gateway/api/usage').set('authorization', `Bearer ${kept.token}`);
  expect(JSON.stringify(usage.body)).toMatch(/"prompts":5/);
  const bobQueue = await request(pgGw.url).get('/api/queue').set('authorization', `Bearer ${kept.token}`);
  const listed = [...bobQueue.body.queue_running, ...bobQueue.body.queue_pending].map((e: unknown[]) => e[1]);
  for (const id of held) expect(listed).toContain(id);
  fake.promptDelayMs = 20;
  for (const id of ids) await fake.waitForPrompt(id, 30_000);
  const posts = fake.requests.filter((r) => r.method === 'POST' && /prompt$/.test(r.rawPath) && r.bodyText);
  for (const id of ids) expect(posts.filter((r) => JSON.parse(r.bodyText!).prompt_id === id)).toHaveLength(1);
});

test('`users` works against PostgreSQL: add, list, role, remove', async () => {
  const dir = keepDir;
  const cfg = path.join(dir, 'pg-config.json');
  fs.writeFileSync(cfg, JSON.stringify({ data_dir: './data-cli', store: { kind: 'postgres', url: db.url }, bcrypt_cost: 4 }));
  const add = io(`${PW}\n`);
  expect(await runUsersCli(['add', 'carol', '--config', cfg], { ...add.streams, cwd: dir, env: {} })).toBe(0);
  expect(add.out()).toMatch(/added carol/);
  // The running gateway (another process on the same database) knows carol at once.
  expect((await request(pgGw!.url).post('/login').send({ username: 'carol', password: PW })).status).toBe(200);
  const list = io();
  expect(await runUsersCli(['list', '--config', cfg], { ...list.streams, cwd: dir, env: {} })).toBe(0);
  expect(list.out()).toMatch(/^admin\tadmin/m);
  expect(list.out()).toMatch(/^carol\tuser/m);
  const lastAdmin = io();
  expect(await runUsersCli(['role', 'admin', 'user', '--config', cfg], { ...lastAdmin.streams, cwd: dir, env: {} })).toBe(1);
  expect(lastAdmin.err()).toMatch(/LAST_ADMIN/);
  const rm = io();
  expect(await runUsersCli(['remove', 'carol', '--config', cfg], { ...rm.streams, cwd: dir, env: {} })).toBe(0);
  expect((await sql.query("SELECT count(*)::int AS n FROM gw_users WHERE username = 'carol'")).rows[0].n).toBe(0);
});

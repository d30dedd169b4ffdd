/**
 * Issue 13 (queue): three gateway replicas on one PostgreSQL share ONE gateway queue. Exactly one replica releases
 * prompts (an advisory-lock lease); the others enqueue into PostgreSQL and follow the queue through LISTEN/NOTIFY.
 * Prompts posted through a round-robin balancer leave in one fair order, none twice; kill -9 of the releaser hands
 * the queue to another replica; /queue on any replica shows the caller's held prompts; events of a prompt released
 * by one replica reach the owner's socket on another, with two workers.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import type { ChildGateway } from './helpers/child';
import { signedUpUsers, spawnReplicas } from './helpers/replicas';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { createTestDatabase, eventually, type TestDatabase } from './helpers/pg';
import { startRoundRobin, type RoundRobin } from './helpers/roundRobin';
import { openSocket, type TestSocket } from './helpers/ws';

jest.setTimeout(180_000);

let db: TestDatabase;
let fakes: FakeComfy[];
let dir: string;
const replicas: ChildGateway[] = [];
let lb: RoundRobin;
const sockets: TestSocket[] = [];
const tokens: Record<string, string> = {};
const USERS = ['alice', 'bob', 'carol'];

beforeAll(async () => {
  db = await createTestDatabase();
  fakes = [await startFakeComfy(), await startFakeComfy()];
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-replicas-queue-'));
  replicas.push(
    ...(await spawnReplicas({
      dir,
      count: 3,
      dbUrl: db.url,
      prefix: 'cgw-rq',
      config: {
        upstreams: fakes.map((f, n) => ({ url: f.url, name: `w${n}` })),
        shared_input: fakes[0].inputDir,
        trusted_proxies: ['127.0.0.1'],
      },
    })),
  );
  lb = await startRoundRobin(replicas.map((r) => r.port));
  Object.assign(tokens, await signedUpUsers(replicas[0], lb.url, USERS));
});
afterAll(async () => {
  for (const s of sockets) s.close();
  for (const r of replicas) r.kill('SIGKILL');
  await Promise.all(replicas.map((r) => r.exited));
  await lb?.close();
  for (const f of fakes ?? []) await f.close();
  await db?.drop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

// each case starts with idle workers: nothing held, and everything the last one sent has finished
afterEach(async () => {
  for (const f of fakes) f.promptDelayMs = 20;
  const admin = async () => (await request(alive()[0].url).get('/gateway/api/queue').set('authorization', `Bearer ${tokens.admin}`)).body;
  await eventually(async () => (await admin()).held?.length === 0, 30_000, 'nothing held');
  // (a prompt the fake refused with a 400 never runs)
  for (const f of fakes) for (const id of arrivals(f)) if (f.prompts.has(id)) await f.waitForPrompt(id, 30_000);
});

const RELEASES = /now releases the held prompts/g;
/** How many times each replica said it took the releaser lease. */
const leases = () => replicas.map((r) => (r.stdout() + r.stderr()).match(RELEASES)?.length ?? 0);
const alive = () => replicas.filter((r) => r.proc.exitCode === null && r.proc.signalCode === null);

/** The gateway prompt ids in the order they reached a fake ComfyUI. */
const arrivals = (fake: FakeComfy) =>
  fake.requests
    .filter((r) => r.method === 'POST' && /prompt$/.test(r.rawPath) && r.bodyText)
    .map((r) => JSON.parse(r.bodyText!).prompt_id as string);

const post = (base: string, user: string, tag: string) =>
  request(base)
    .post('/api/prompt')
    .set('authorization', `Bearer ${tokens[user]}`)
    .send({ prompt: sampleWorkflow(tag) });

/** The held prompt ids `user`'s GET /queue shows on `base`. */
const queued = async (base: string, user: string) => {
  const r = await request(base).get('/api/queue').set('authorization', `Bearer ${tokens[user]}`);
  expect(r.status).toBe(200);
  return [...r.body.queue_running, ...r.body.queue_pending].map((e: unknown[]) => e[1] as string);
};

/**
 * Fills both workers' two slots (running + waiting) with admin prompts that take as long as the test needs; the
 * test then lets one worker go (its promptDelayMs drops), so what it receives arrives in release order.
 */
async function block(base: string): Promise<void> {
  const before = fakes.map((f) => arrivals(f).length);
  for (const f of fakes) f.promptDelayMs = 120_000;
  // `front`: before every user's turn, so no user's prompt takes a blocker's waiting slot back
  for (let i = 0; i < 4; i++)
    expect(
      (
        await request(base)
          .post('/api/prompt')
          .set('authorization', `Bearer ${tokens.admin}`)
          .send({ prompt: sampleWorkflow(`block${i}`), front: true })
      ).status,
    ).toBe(200);
  await eventually(() => fakes.every((f, n) => arrivals(f).length === before[n] + 2), 15_000, 'two blockers on each worker');
}
/** Lets every worker run its prompts quickly again. */
const unblock = () => fakes.forEach((f) => (f.promptDelayMs = 20));

test('exactly one replica releases; prompts of three users posted through all three replicas leave round robin, none twice', async () => {
  await eventually(() => leases().reduce((a, b) => a + b, 0) === 1, 15_000, 'one releaser');
  const fake = fakes[0];
  await block(lb.url);
  // the worst order for fifo: each user's prompts in a row, spread over the replicas by the balancer
  const ids: Record<string, string[]> = { alice: [], bob: [], carol: [] };
  for (const u of USERS)
    for (let i = 0; i < 3; i++) {
      const r = await post(lb.url, u, `${u}${i}`);
      expect(r.status).toBe(200);
      ids[u].push(r.body.prompt_id);
    }
  // every replica shows each user their own three held prompts, in their order
  for (const r of replicas)
    for (const u of USERS)
      await eventually(async () => JSON.stringify(await queued(r.url, u)) === JSON.stringify(ids[u]), 10_000, `${u}'s queue on ${r.url}`);
  const mine = await queued(replicas[2].url, 'alice');
  expect(mine).toEqual(ids.alice);
  // the admin's view on every replica: one order, round robin between the users
  const fair = [0, 1, 2].flatMap((i) => [ids.alice[i], ids.bob[i], ids.carol[i]]);
  for (const r of replicas) {
    const q = await request(r.url).get('/gateway/api/queue').set('authorization', `Bearer ${tokens.admin}`);
    expect(q.status).toBe(200);
    expect(q.body.held.map((p: { prompt_id: string }) => p.prompt_id)).toEqual(fair);
  }
  // only the first worker is let go: the second keeps its blockers, so all nine go to the first, one by one
  fake.promptDelayMs = 20;
  const all = [...ids.alice, ...ids.bob, ...ids.carol];
  await eventually(() => all.every((id) => arrivals(fake).includes(id)), 30_000, 'all nine released');
  const order = arrivals(fake).filter((id) => all.includes(id));
  expect(order).toEqual(fair);
  const everywhere = fakes.flatMap(arrivals);
  expect(new Set(everywhere).size).toBe(everywhere.length);
  for (const id of all) await fake.waitForPrompt(id, 30_000);
  unblock();
});

test('a per-user limit set on one replica is counted across all of them (429 QUEUE_LIMIT, nothing sent)', async () => {
  const set = await request(replicas[0].url)
    .put('/gateway/api/queue/limits/bob')
    .set('authorization', `Bearer ${tokens.admin}`)
    .send({ max_waiting: 1, max_running: null, per_day: null });
  expect(set.status).toBe(200);
  await block(lb.url);
  const first = await post(replicas[1].url, 'bob', 'lim0');
  expect(first.status).toBe(200);
  const before = fakes.map((f) => f.requests.length);
  // the other replicas learn of bob's held prompt (and of his limit) through PostgreSQL
  for (const rep of [replicas[0], replicas[2]]) {
    await eventually(async () => (await queued(rep.url, 'bob')).includes(first.body.prompt_id), 10_000, "bob's prompt seen");
    const r = await post(rep.url, 'bob', 'lim1');
    expect(r.status).toBe(429);
    expect(r.body.error.code).toBe('QUEUE_LIMIT');
  }
  // nothing of the refused ones reached a worker
  expect(fakes.flatMap((f, n) => f.requests.slice(before[n]).filter((x) => x.method === 'POST'))).toEqual([]);
  expect(
    (await request(replicas[2].url).delete('/gateway/api/queue/limits/bob').set('authorization', `Bearer ${tokens.admin}`)).status,
  ).toBe(204);
  unblock();
  await eventually(() => fakes.some((f) => f.prompts.has(first.body.prompt_id)), 30_000, 'the held one released');
});

test('kill -9 of the releasing replica: another takes over and the held prompts still run, each once', async () => {
  await block(lb.url);
  const held: string[] = [];
  for (const u of ['alice', 'bob']) for (let i = 0; i < 2; i++) held.push((await post(lb.url, u, `k${u}${i}`)).body.prompt_id);
  for (const u of ['alice', 'bob']) await eventually(async () => (await queued(replicas[0].url, u)).length === 2, 10_000, `${u} held`);
  const before = leases();
  const releaser = replicas[before.findIndex((n) => n > 0)];
  releaser.kill('SIGKILL');
  await releaser.exited;
  const next = await eventually(
    () => replicas.find((r, i) => leases()[i] > before[i] && r !== releaser) ?? null,
    15_000,
    'another replica took the lease',
  );
  // it took over what the workers hold (the blockers fill their slots), so the four stay held until there is room
  const q = (await request(next!.url).get('/gateway/api/queue').set('authorization', `Bearer ${tokens.admin}`)).body;
  expect(q.workers.map((w: { running: number; waiting: number }) => w.running + w.waiting)).toEqual([2, 2]);
  expect(q.held.map((p: { prompt_id: string }) => p.prompt_id).sort()).toEqual([...held].sort());
  unblock();
  const fakeOf = (id: string) =>
    eventually(() => fakes.find((f) => f.prompts.has(id)) ?? null, 30_000, `${id} released`) as Promise<FakeComfy>;
  for (const id of held) await (await fakeOf(id)).waitForPrompt(id, 30_000);
  for (const id of held) expect(fakes.flatMap(arrivals).filter((x) => x === id)).toHaveLength(1);
  // and the survivors still take prompts: the new releaser sends them
  const survivor = alive()[0];
  const r = await post(survivor.url, 'carol', 'after');
  expect(r.status).toBe(200);
  await (await fakeOf(r.body.prompt_id)).waitForPrompt(r.body.prompt_id, 30_000);
});

test("two workers: a prompt posted via one replica and released by another reaches the owner's socket on a third", async () => {
  // after the kill above two replicas are left: the socket is on one, the post goes through the other, and the
  // first worker is kept busy so the prompt runs on the second
  const live = alive();
  await block(live[0].url);
  const w1 = arrivals(fakes[1]).slice(-2);
  fakes[1].promptDelayMs = 20;
  for (const b of w1) await fakes[1].waitForPrompt(b, 30_000);
  const token = tokens.alice;
  const ws = await openSocket(`${live[0].url.replace(/^http/, 'ws')}/ws?clientId=rq-tab`, { authorization: `Bearer ${token}` });
  sockets.push(ws);
  await ws.next((f) => f.json?.type === 'status');
  const q = await request(live[live.length - 1].url)
    .post('/api/prompt')
    .set('authorization', `Bearer ${token}`)
    .send({ prompt: sampleWorkflow('rq-events'), client_id: 'rq-tab' });
  expect(q.status).toBe(200);
  const id = q.body.prompt_id as string;
  const done = await ws.next((f) => f.json?.type === 'executing' && f.json.data.node === null && f.json.data.prompt_id === id, 20_000);
  expect(done.json.data.prompt_id).toBe(id);
  expect(fakes[1].prompts.has(id)).toBe(true);
  expect(fakes[0].prompts.has(id)).toBe(false);
  unblock();
});

test('a held prompt ComfyUI refuses at release reaches its owner on a replica that does not release (execution_error, /history)', async () => {
  const live = alive();
  const follower = live.find((r) => leases()[replicas.indexOf(r)] === 0)!;
  expect(follower).toBeDefined();
  const ws = await openSocket(`${follower.url.replace(/^http/, 'ws')}/ws?clientId=rq-refused`, { authorization: `Bearer ${tokens.alice}` });
  sockets.push(ws);
  await ws.next((f) => f.json?.type === 'status');
  // every worker busy, so the prompt is really held (with room, the follower would answer ComfyUI's 400 itself)
  await block(live[0].url);
  const bad = await request(follower.url)
    .post('/api/prompt')
    .set('authorization', `Bearer ${tokens.alice}`)
    .send({ prompt: { '1': { class_type: 'NoSuchNode', inputs: {} } }, client_id: 'rq-refused' });
  // held: the refusal comes later, from the releasing replica's attempt once a worker has room
  expect(bad.status).toBe(200);
  const id = bad.body.prompt_id as string;
  expect(fakes.some((f) => arrivals(f).includes(id))).toBe(false);
  unblock();
  const err = await ws.next((f) => f.json?.type === 'execution_error' && f.json.data.prompt_id === id, 15_000);
  expect(err.json.data.exception_type).toBe('PromptRefused');
  expect(err.json.data.exception_message).toMatch(/NoSuchNode/);
  // every replica's /history shows it (each hears the refusal through the change feed)
  for (const r of live) {
    const h = await eventually(
      async () => {
        const res = await request(r.url).get(`/history/${id}`).set('authorization', `Bearer ${tokens.alice}`);
        return res.body[id] ? res.body : null;
      },
      5000,
      `the refusal in /history on ${r.url}`,
    );
    expect(h[id].status).toMatchObject({ status_str: 'error', completed: false });
  }
});

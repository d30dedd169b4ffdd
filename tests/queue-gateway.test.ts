/**
 * Issue 12: the gateway's own queue on one worker — prompts held while ComfyUI is busy, released fairly (or in
 * arrival order), limits refused with 429 before anything reaches ComfyUI, and what clients see stays ComfyUI's.
 */
import request from 'supertest';
import { sampleWorkflow, type FakeComfy } from './helpers/fakeComfy';
import { eventually } from './helpers/queue';
import { addUser, postJson, raw, socket, startIsolationEnv, until, type Caller, type IsolationEnv } from './isolation-env';

async function post(env: IsolationEnv, who: Caller, tag: string): Promise<string> {
  const r = await postJson(env.gw, '/prompt', who, { prompt: sampleWorkflow(tag) });
  if (r.status !== 200) throw new Error(`${who.name}: ${r.status} ${r.text}`);
  const j = r.json();
  expect(Object.keys(j).sort()).toEqual(['node_errors', 'number', 'prompt_id']);
  return j.prompt_id;
}

describe.each(['fair', 'fifo'] as const)('release order, %s', (policy) => {
  let env: IsolationEnv;
  let carol: Caller;
  beforeAll(async () => {
    env = await startIsolationEnv({ fake: { promptDelayMs: 250 }, config: { scheduler: { policy } } });
    carol = await addUser(env.gw, 'carol');
  });
  afterAll(() => env.close());

  test('one user queues four, then two others two each, while the first runs', async () => {
    env.fake.clearRequests();
    env.fake.promptDelayMs = 5000; // the first runs while the others are posted
    const a = [await post(env, env.alice, 'a1')];
    for (const t of ['a2', 'a3', 'a4']) a.push(await post(env, env.alice, t));
    const b = [await post(env, env.bob, 'b1'), await post(env, env.bob, 'b2')];
    const c = [await post(env, carol, 'c1'), await post(env, carol, 'c2')];
    // ComfyUI never holds more than one running and one waiting of the gateway's prompts
    const q = (await (await fetch(`${env.fake.url}/queue`)).json()) as { queue_running: unknown[]; queue_pending: unknown[] };
    expect(q.queue_running.length + q.queue_pending.length).toBeLessThanOrEqual(2);
    env.fake.promptDelayMs = 100;
    const all = [...a, ...b, ...c];
    for (const id of all) await env.fake.waitForPrompt(id, 20_000);
    // fair: round robin from the first (alice's second, if it reached the waiting slot before bob's first
    // arrived, is taken back from it: bob's turn came first)
    const want = policy === 'fair' ? [a[0], b[0], c[0], a[1], b[1], c[1], a[2], a[3]] : [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1]];
    const startOf = (id: string) => env.fake.prompts.get(id).start_time as number;
    expect([...all].sort((x, y) => startOf(x) - startOf(y))).toEqual(want);
  });
});

describe('held prompts, as clients see them', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({ fake: { promptDelayMs: 1500 } });
  });
  afterAll(() => env.close());

  test('/queue, GET /prompt, /api/jobs show the caller’s own held prompts; delete, clear and interrupt remove them', async () => {
    const running = await post(env, env.alice, 'run');
    const waiting = await post(env, env.alice, 'wait');
    // bob's first takes ComfyUI's waiting slot (his turn comes before alice's second: if hers was already there,
    // it is taken back); the rest are held by the gateway
    const slot = await post(env, env.bob, 'bw');
    const held = [await post(env, env.bob, 'h1'), await post(env, env.bob, 'h2'), await post(env, env.bob, 'h3')];
    const mine = await post(env, env.alice, 'later');
    await eventually(() => env.fake.prompts.has(slot), 10_000, 'bob’s first at ComfyUI');
    // held: not at ComfyUI
    for (const id of [waiting, ...held, mine]) expect(env.fake.prompts.has(id)).toBe(false);

    const bq = (await raw(env.gw, 'GET', '/queue', { headers: env.bob.headers })).json();
    expect(bq.queue_running).toEqual([]);
    expect(bq.queue_pending.map((e: unknown[]) => e[1])).toEqual([slot, ...held]);
    const aq = (await raw(env.gw, 'GET', '/api/queue', { headers: env.alice.headers })).json();
    expect(aq.queue_running.map((e: unknown[]) => e[1])).toEqual([running]);
    expect(aq.queue_pending.map((e: unknown[]) => e[1])).toEqual([waiting, mine]);
    // fair: alice's third waits behind bob's first held one (her turn came twice already)
    const [w, first] = aq.queue_pending.map((e: number[]) => e[0]);
    const bobFirst = (bq.queue_pending[1] as number[])[0];
    expect(first).toBeGreaterThan(bobFirst);
    expect(w).toBeLessThan(bobFirst);

    const count = async (c: Caller) => (await raw(env.gw, 'GET', '/prompt', { headers: c.headers })).json().exec_info.queue_remaining;
    expect(await count(env.bob)).toBe(4);
    expect(await count(env.alice)).toBe(3);

    const jobs = (await raw(env.gw, 'GET', '/api/jobs?status=pending', { headers: env.bob.headers })).json();
    expect(jobs.jobs.map((j: { id: string }) => j.id).sort()).toEqual([slot, ...held].sort());
    expect(jobs.jobs.every((j: { status: string }) => j.status === 'pending')).toBe(true);
    const one = await raw(env.gw, 'GET', `/api/jobs/${held[0]}`, { headers: env.bob.headers });
    expect([one.status, one.json().status]).toEqual([200, 'pending']);
    // another user's held prompt is not found, and cannot be deleted
    expect((await raw(env.gw, 'GET', `/api/jobs/${held[0]}`, { headers: env.alice.headers })).status).toBe(404);
    await postJson(env.gw, '/queue', env.alice, { delete: [held[0]] });
    expect(env.gw.composed.queue.held(null).map((h) => h.id)).toContain(held[0]);

    // bob deletes one, interrupts another, clears the rest: none of them ever reaches ComfyUI
    expect((await postJson(env.gw, '/queue', env.bob, { delete: [held[0]] })).status).toBe(200);
    expect((await postJson(env.gw, '/interrupt', env.bob, { prompt_id: held[1] })).status).toBe(200);
    expect(await count(env.bob)).toBe(2);
    expect((await postJson(env.gw, '/queue', env.bob, { clear: true })).status).toBe(200);
    // (the one at ComfyUI leaves the count once the gateway's next read of its queue misses it)
    await until(async () => (await count(env.bob)) === 0, 10_000, 'bob’s count 0');
    expect((await raw(env.gw, 'GET', '/queue', { headers: env.bob.headers })).json().queue_pending).toEqual([]);
    await env.fake.waitForPrompt(mine, 20_000);
    for (const id of held) expect(env.fake.prompts.has(id)).toBe(false);
  });

  test('the WebSocket status carries the user’s own count; a held prompt ComfyUI refuses reaches its owner as execution_error and /history', async () => {
    const ws = await socket(env.gw, env.alice, 'alice-tab');
    try {
      await post(env, env.alice, 'r1');
      await post(env, env.alice, 'r2');
      const bad = await postJson(env.gw, '/prompt', env.alice, {
        prompt: { '1': { class_type: 'NoSuchNode', inputs: {} } },
        client_id: 'alice-tab',
      });
      expect(bad.status).toBe(200);
      const id = bad.json().prompt_id;
      await ws.next((f) => f.json?.type === 'status' && f.json.data.status.exec_info.queue_remaining === 3, 5000);
      const err = await ws.next((f) => f.json?.type === 'execution_error' && f.json.data.prompt_id === id, 10_000);
      expect(err.json.data.exception_message).toMatch(/NoSuchNode/);
      const h = (await raw(env.gw, 'GET', `/history/${id}`, { headers: env.alice.headers })).json();
      expect(h[id].status).toMatchObject({ status_str: 'error', completed: false });
      expect((await raw(env.gw, 'GET', '/history', { headers: env.alice.headers })).json()[id]).toBeDefined();
      expect((await raw(env.gw, 'GET', '/history', { headers: env.bob.headers })).json()[id]).toBeUndefined();
    } finally {
      ws.close();
    }
  });

  test('a bad prompt sent while the worker has room still gets ComfyUI’s own 400 with node_errors', async () => {
    await eventually(() => env.gw.composed.queue.countFor('alice', false) === 0, 20_000, 'alice’s queue empty');
    await post(env, env.alice, 'busy');
    const r = await postJson(env.gw, '/prompt', env.alice, { prompt: { '1': { class_type: 'NoSuchNode', inputs: {} } } });
    expect(r.status).toBe(400);
    expect(r.json()).toHaveProperty('node_errors');
  });
});

describe('usage', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({ fake: { promptDelayMs: 400 } });
  });
  afterAll(() => env.close());

  test('GPU-seconds and images per user per day: users see their own, admins everyone; bad days are 400', async () => {
    const ids = [await post(env, env.alice, 'u1'), await post(env, env.alice, 'u2'), await post(env, env.bob, 'u3')];
    for (const id of ids) await env.fake.waitForPrompt(id, 20_000);
    const today = new Date().toISOString().slice(0, 10);
    const usage = async (c: Caller, q = '') => (await raw(env.gw, 'GET', `/gateway/api/usage${q}`, { headers: c.headers })).json();
    const end = Date.now() + 20_000;
    let all: any;
    for (;;) {
      all = await usage(env.admin);
      const rows = all.usage as { user: string; images: number }[];
      if (rows.reduce((n, r) => n + r.images, 0) === 3 || Date.now() > end) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const row = (u: string) => all.usage.find((r: { user: string }) => r.user === u);
    expect(row('alice')).toMatchObject({ day: today, prompts: 2, images: 2 });
    expect(row('alice').gpu_seconds).toBeGreaterThanOrEqual(0.6);
    expect(row('bob')).toMatchObject({ day: today, prompts: 1, images: 1 });
    expect(row('bob').gpu_seconds).toBeGreaterThanOrEqual(0.3);
    const bob = await usage(env.bob, `?from=${today}&to=${today}`);
    expect(bob.usage.map((r: { user: string }) => r.user)).toEqual(['bob']);
    expect((await usage(env.bob, '?from=2020-01-01&to=2020-01-02')).usage).toEqual([]);
    const bad = await raw(env.gw, 'GET', '/gateway/api/usage?from=yesterday', { headers: env.bob.headers });
    expect([bad.status, bad.json().error.code]).toEqual([400, 'INVALID_BODY']);
  });
});

describe('limits', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({ fake: { promptDelayMs: 1500 }, config: { limits: { user: { max_waiting: 2 } } } });
  });
  afterAll(() => env.close());

  const posts = (fake: FakeComfy) => fake.requests.filter((r) => r.method === 'POST' && /prompt$/.test(r.rawPath)).length;

  test('max_waiting: 429 QUEUE_LIMIT, nothing reaches ComfyUI, nothing is queued', async () => {
    await post(env, env.alice, 'l1'); // running
    await post(env, env.alice, 'l2');
    await post(env, env.alice, 'l3');
    const before = posts(env.fake);
    const r = await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('l4') });
    expect(r.status).toBe(429);
    expect(r.json().error).toMatchObject({ code: 'QUEUE_LIMIT', details: { limit: 'max_waiting', value: 2, current: 2, resets_at: null } });
    expect((await raw(env.gw, 'GET', '/prompt', { headers: env.alice.headers })).json().exec_info.queue_remaining).toBe(3);
    await new Promise((res) => setTimeout(res, 300));
    expect(posts(env.fake)).toBe(before);
  });

  test('per_day set for one user over the admin API: 429 QUOTA_EXCEEDED with when it resets', async () => {
    const set = await request(env.gw.url).put('/gateway/api/queue/limits/bob').set(env.admin.headers).send({ per_day: 1 });
    expect(set.status).toBe(200);
    // not for users themselves
    expect((await request(env.gw.url).put('/gateway/api/queue/limits/bob').set(env.bob.headers).send({ per_day: 9 })).status).toBe(403);
    expect((await request(env.gw.url).put('/gateway/api/queue/limits/bob').set(env.admin.headers).send({ per_day: -1 })).status).toBe(400);
    expect((await request(env.gw.url).put('/gateway/api/queue/limits/nobody').set(env.admin.headers).send({ per_day: 1 })).status).toBe(
      404,
    );
    await post(env, env.bob, 'q1');
    const r = await postJson(env.gw, '/prompt', env.bob, { prompt: sampleWorkflow('quota-refused') });
    expect(r.status).toBe(429);
    const e = r.json().error;
    expect(e).toMatchObject({ code: 'QUOTA_EXCEEDED', details: { limit: 'per_day', value: 1, current: 1 } });
    const midnight = new Date();
    midnight.setUTCHours(24, 0, 0, 0);
    expect(e.details.resets_at).toBe(midnight.toISOString());
    await new Promise((res) => setTimeout(res, 300));
    // (alice's waiting prompt from the test before may be sent again: bob's first took its slot)
    expect(env.fake.requests.some((x) => x.method === 'POST' && x.bodyText?.includes('quota-refused'))).toBe(false);
    const q = (await request(env.gw.url).get('/gateway/api/queue').set(env.admin.headers)).body;
    expect(q.limits.users.bob).toEqual({ max_waiting: null, max_running: null, per_day: 1 });
    expect(q.workers).toEqual([expect.objectContaining({ name: 'default', up: true })]);
  });
});

/**
 * Issue 12, fairness under load: a prompt already in the worker's waiting slot (it had not started) is taken back
 * when another user's prompt arrives whose turn comes earlier (POST /queue {"delete"} on the worker, then a read
 * to confirm it left), held again at its place, and the earlier turn runs first. If it started meanwhile it stays:
 * nothing is lost and nothing runs twice.
 */
import { sampleWorkflow, type FakeComfy } from './helpers/fakeComfy';
import { eventually } from './helpers/queue';
import type { TestSocket } from './helpers/ws';
import { postJson, raw, socket, until, startIsolationEnv, type Caller, type IsolationEnv } from './isolation-env';

/** Bodies of the POST /queue requests the fake ComfyUI received. */
const queuePosts = (fake: FakeComfy) =>
  fake.requests.filter((r) => r.method === 'POST' && /^\/(api\/)?queue$/.test(r.rawPath)).map((r) => JSON.parse(r.bodyText ?? '{}'));
/** How many times a prompt id was POSTed to the fake. */
const sends = (fake: FakeComfy, id: string) =>
  fake.requests.filter((r) => r.method === 'POST' && /^\/(api\/)?prompt$/.test(r.rawPath) && r.bodyText?.includes(id)).length;
/** The prompt ids in the order the fake started them. */
const started = (fake: FakeComfy, ids: string[]) =>
  ids
    .filter((id) => fake.prompts.get(id)?.start_time !== undefined)
    .sort((a, b) => fake.prompts.get(a).start_time - fake.prompts.get(b).start_time);
/** `execution_start` frames a socket received for a prompt. */
const starts = (ws: TestSocket, id: string) =>
  ws.frames.filter((f) => !f.isBinary && /execution_start/.test(f.data.toString()) && f.data.toString().includes(id)).length;

describe('taking a waiting prompt back for an earlier turn', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    // no coalescing window: the second prompt of a user goes into the waiting slot at once, as under load
    env = await startIsolationEnv({ fake: { promptDelayMs: 2000 }, config: { scheduler: { policy: 'fair', coalesce_ms: 0 } } });
  });
  afterAll(() => env.close());

  const post = async (c: Caller, tag: string, clientId: string) => {
    const r = await postJson(env.gw, '/prompt', c, { prompt: sampleWorkflow(tag), client_id: clientId });
    expect(r.status).toBe(200);
    return r.json().prompt_id as string;
  };
  const remaining = async (c: Caller) => (await raw(env.gw, 'GET', '/prompt', { headers: c.headers })).json().exec_info.queue_remaining;
  const fakeQueue = async () =>
    (await (await fetch(`${env.fake.url}/queue`)).json()) as { queue_running: unknown[][]; queue_pending: unknown[][] };
  const idle = () => until(async () => (await fakeQueue()).queue_running.length === 0, 30_000, 'the worker idle');

  test('a later user’s first prompt takes the slot of the first user’s second; each runs once', async () => {
    env.fake.promptDelayMs = 2000;
    const ws = await socket(env.gw, env.alice, 'alice-r1');
    try {
      env.fake.clearRequests();
      const a1 = await post(env.alice, 'r1-a1', 'alice-r1');
      const a2 = await post(env.alice, 'r1-a2', 'alice-r1');
      await eventually(() => env.fake.prompts.has(a2), 10_000, 'a2 in the waiting slot');
      const b1 = await post(env.bob, 'r1-b1', 'bob-r1');
      await eventually(() => env.fake.prompts.has(b1), 10_000, 'b1 released');
      expect(queuePosts(env.fake)).toEqual([{ delete: [a2] }]);
      // ComfyUI holds one running and one waiting: b1 waits there, a2 is held by the gateway again
      expect((await fakeQueue()).queue_pending.map((e) => e[1])).toEqual([b1]);
      // alice's /queue still shows a2, held by the gateway again
      const aq = (await raw(env.gw, 'GET', '/queue', { headers: env.alice.headers })).json();
      expect(aq.queue_pending.map((e: unknown[]) => e[1])).toEqual([a2]);
      env.fake.promptDelayMs = 200;
      await eventually(() => started(env.fake, [a1, a2, b1]).length === 3 && env.fake.prompts.get(a2)?.end_time, 30_000, 'all ran');
      expect(started(env.fake, [a1, a2, b1])).toEqual([a1, b1, a2]);
      expect(sends(env.fake, a2)).toBe(2);
      await ws.next((f) => !f.isBinary && f.data.toString().includes('execution_success') && f.data.toString().includes(a2), 10_000);
      expect(starts(ws, a2)).toBe(1);
      await idle();
    } finally {
      ws.close();
    }
  });

  test('a waiting prompt that started before the delete reached ComfyUI stays: run once, never sent again', async () => {
    env.fake.promptDelayMs = 60_000;
    const ws = await socket(env.gw, env.alice, 'alice-r2');
    try {
      env.fake.clearRequests();
      const a1 = await post(env.alice, 'r2-a1', 'alice-r2');
      const a2 = await post(env.alice, 'r2-a2', 'alice-r2');
      await eventually(() => env.fake.prompts.has(a2), 10_000, 'a2 in the waiting slot');
      // the delete is held unanswered while the running prompt ends and a2 starts
      env.fake.stall({ path: '/queue', method: 'POST', beforeHeadersMs: null, thenHandle: true });
      const b1 = await post(env.bob, 'r2-b1', 'bob-r2');
      await eventually(() => env.fake.requests.some((r) => r.method === 'POST' && /queue$/.test(r.rawPath)), 10_000, 'the delete sent');
      env.fake.promptDelayMs = 300;
      await eventually(() => env.fake.prompts.get(a2)?.start_time, 30_000, 'a2 started');
      env.fake.clearStalls();
      await eventually(() => env.fake.prompts.get(b1)?.end_time, 30_000, 'b1 ran');
      expect(queuePosts(env.fake)).toEqual([{ delete: [a2] }]);
      expect(started(env.fake, [a1, a2, b1])).toEqual([a1, a2, b1]);
      expect(sends(env.fake, a2)).toBe(1);
      expect(env.fake.prompts.get(a2).end_time).toBeDefined();
      expect(starts(ws, a2)).toBe(1);
      // no copy of a2 left behind in the gateway's queue
      await until(async () => (await remaining(env.alice)) === 0, 10_000, 'alice’s count back to 0');
      await idle();
    } finally {
      ws.close();
    }
  });

  test('its owner deletes it while it is being taken back: it stays deleted (not held again, never run)', async () => {
    env.fake.promptDelayMs = 60_000;
    env.fake.clearRequests();
    const a1 = await post(env.alice, 'r4-a1', 'alice-r4');
    const a2 = await post(env.alice, 'r4-a2', 'alice-r4');
    await eventually(() => env.fake.prompts.has(a2), 10_000, 'a2 in the waiting slot');
    env.fake.stall({ path: '/queue', method: 'POST', beforeHeadersMs: null, thenHandle: true });
    const b1 = await post(env.bob, 'r4-b1', 'bob-r4');
    await eventually(() => queuePosts(env.fake).length === 1, 10_000, 'the take-back’s delete sent');
    // alice deletes a2 meanwhile (her delete reaches ComfyUI after the gateway's)
    const del = postJson(env.gw, '/queue', env.alice, { delete: [a2] });
    await eventually(() => env.fake.requests.filter((r) => r.method === 'POST' && /queue$/.test(r.rawPath)).length === 2, 10_000, 'hers');
    env.fake.clearStalls();
    expect((await del).status).toBe(200);
    await eventually(() => env.fake.prompts.has(b1), 10_000, 'b1 released');
    env.fake.promptDelayMs = 100;
    await eventually(() => env.fake.prompts.get(b1)?.end_time, 30_000, 'b1 ran');
    await idle();
    expect(started(env.fake, [a1, a2, b1])).toEqual([a1, b1]);
    expect(sends(env.fake, a2)).toBe(1);
    await until(async () => (await remaining(env.alice)) === 0, 10_000, 'alice’s count 0');
    expect(env.gw.composed.queue.held(null).map((h) => h.id)).not.toContain(a2);
  });

  test('no take-back when the waiting prompt’s turn is still first (the same user, fifo order)', async () => {
    env.fake.promptDelayMs = 1500;
    env.fake.clearRequests();
    const a1 = await post(env.alice, 'r3-a1', 'alice-r3');
    const a2 = await post(env.alice, 'r3-a2', 'alice-r3');
    await eventually(() => env.fake.prompts.has(a2), 10_000, 'a2 in the waiting slot');
    const a3 = await post(env.alice, 'r3-a3', 'alice-r3');
    env.fake.promptDelayMs = 100;
    await eventually(() => env.fake.prompts.get(a3)?.end_time, 30_000, 'a3 ran');
    expect(queuePosts(env.fake)).toEqual([]);
    expect(started(env.fake, [a1, a2, a3])).toEqual([a1, a2, a3]);
    await idle();
  });
});

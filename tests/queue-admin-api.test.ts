/**
 * Issue 12: the admin queue API over HTTP — reorder and `front` change the release order, limits set over the API
 * refuse with 429 QUEUE_LIMIT / QUOTA_EXCEEDED and say which limit and when it resets, a non-admin is refused 403
 * with nothing changed, and malformed bodies are 400 INVALID_BODY. One fake worker whose prompts run until stopped.
 */
import { sampleWorkflow } from './helpers/fakeComfy';
import { eventually } from './helpers/queue';
import { postJson, raw, startIsolationEnv, until, type Caller, type IsolationEnv } from './isolation-env';

describe('the admin queue API', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({ fake: { promptDelayMs: 120_000 } });
  });
  afterAll(() => env.close());

  const post = async (c: Caller, tag: string, extra: Record<string, unknown> = {}) => {
    const r = await postJson(env.gw, '/prompt', c, { prompt: sampleWorkflow(tag), ...extra });
    expect(r.status).toBe(200);
    return r.json().prompt_id as string;
  };
  const send = (c: Caller, method: string, path: string, body?: unknown) =>
    body === undefined
      ? raw(env.gw, method, path, { headers: c.headers })
      : raw(env.gw, method, path, {
          headers: { ...c.headers, 'Content-Type': 'application/json' },
          body: typeof body === 'string' ? body : JSON.stringify(body),
        });
  const state = async () => (await raw(env.gw, 'GET', '/gateway/api/queue', { headers: env.admin.headers })).json();
  const heldIds = async () => (await state()).held.map((h: { prompt_id: string }) => h.prompt_id) as string[];
  const promptPosts = () => env.fake.requests.filter((r) => r.method === 'POST' && /prompt$/.test(r.rawPath)).length;
  const refused = (r: { status: number; text: string }) => [r.status, r.text ? JSON.parse(r.text).error?.code : r.text];

  test('reorder and front: admins change the release order; users are refused and change nothing; bad bodies are 400', async () => {
    // one running (alice's) and one waiting (bob's) on the worker; the rest held by the gateway (bob's first keeps
    // its slot: his turn is not after the held ones)
    const onWorker = [await post(env.alice, 'a0'), await post(env.bob, 'b0')];
    await eventually(() => onWorker.every((id) => env.fake.prompts.has(id)), 20_000, 'two on the worker');
    const a = [await post(env.alice, 'a1'), await post(env.alice, 'a2')];
    const b = [await post(env.bob, 'b1'), await post(env.bob, 'b2')];
    const before = await heldIds();
    expect([...before].sort()).toEqual([...a, ...b].sort());
    expect(before.indexOf(a[0])).toBeLessThan(before.indexOf(a[1])); // a user's own order

    // a user cannot reorder, nor read the admin view
    expect(refused(await send(env.bob, 'POST', '/gateway/api/queue/reorder', { ids: [b[1]] }))).toEqual([403, 'FORBIDDEN']);
    expect((await raw(env.gw, 'GET', '/gateway/api/queue', { headers: env.bob.headers })).status).toBe(403);
    expect(await heldIds()).toEqual(before);

    for (const bad of [{ ids: 'x' }, { ids: [1] }, { ids: [b[1]], extra: true }, '{"ids": [', '[1]'])
      expect(refused(await send(env.admin, 'POST', '/gateway/api/queue/reorder', bad))).toEqual([400, 'INVALID_BODY']);
    const unknown = await send(env.admin, 'POST', '/gateway/api/queue/reorder', { ids: [b[1], 'not-held'] });
    expect(refused(unknown)).toEqual([400, 'INVALID_BODY']);
    expect(unknown.json().error.details.unknown).toEqual(['not-held']);
    expect(await heldIds()).toEqual(before);

    // bob's second prompt first, then alice's last: the rest keep their order
    const ok = await send(env.admin, 'POST', '/gateway/api/queue/reorder', { ids: [b[1], a[1]] });
    expect(ok.status).toBe(200);
    const after = await heldIds();
    expect(ok.json().held).toEqual(after);
    expect(after.slice(0, 2)).toEqual([b[1], a[1]]);
    // users see their held prompts in the new order too (after the one ComfyUI holds)
    const bobQueue = (await raw(env.gw, 'GET', '/queue', { headers: env.bob.headers })).json();
    expect(bobQueue.queue_pending.map((e: unknown[]) => e[1])).toEqual([onWorker[1], b[1], b[0]]);

    // front: an admin's prompt goes before everyone (it takes the worker's waiting slot: bob's b0 is held again,
    // first in his lane); a user's `front` is ignored
    const urgent = await post(env.admin, 'urgent', { front: true });
    const sneaky = await post(env.bob, 'sneaky', { front: true });
    await until(async () => (await heldIds()).includes(onWorker[1]) && env.fake.prompts.has(urgent), 20_000, 'urgent in the slot');
    expect(env.fake.prompts.has(onWorker[1])).toBe(false);
    const q = (await state()).held;
    expect(q.find((h: { prompt_id: string }) => h.prompt_id === sneaky)).toMatchObject({ front: false });
    const order = q.map((h: { prompt_id: string }) => h.prompt_id) as string[];
    expect(order.indexOf(onWorker[1])).toBeLessThan(order.indexOf(b[0]));

    // the release follows that order: the worker's running prompt ends → urgent runs → the first held is released
    expect((await postJson(env.gw, '/interrupt', env.admin, {})).status).toBe(200);
    await eventually(() => env.fake.prompts.has(order[0]), 20_000, 'the first held released');
    for (const id of order.slice(1)) expect(env.fake.prompts.has(id)).toBe(false);
    expect(await heldIds()).toEqual(order.slice(1));
  });

  test('limits over the admin API: 429 with which limit and when it resets; users refused 403; bad bodies 400', async () => {
    const url = '/gateway/api/queue/limits/alice';
    const overrides = async () => (await state()).limits.users;
    // refused for a user: nothing changes
    expect((await send(env.admin, 'PUT', url, { per_day: 100 })).status).toBe(200);
    expect(refused(await send(env.alice, 'PUT', url, { max_waiting: 100 }))).toEqual([403, 'FORBIDDEN']);
    expect(refused(await send(env.bob, 'DELETE', url))).toEqual([403, 'FORBIDDEN']);
    expect((await overrides()).alice).toEqual({ max_waiting: null, max_running: null, per_day: 100 });
    for (const bad of [{ max_waiting: 'x' }, { max_waiting: -1 }, { max_waiting: 1.5 }, { nope: 1 }, '[1]', '{"max_waiting":'])
      expect(refused(await send(env.admin, 'PUT', url, bad))).toEqual([400, 'INVALID_BODY']);
    expect(refused(await send(env.admin, 'PUT', '/gateway/api/queue/limits/nobody', { per_day: 1 }))[0]).toBe(404);
    expect((await overrides()).alice).toEqual({ max_waiting: null, max_running: null, per_day: 100 });

    // max_waiting: alice already has prompts waiting (held and on the worker)
    expect((await send(env.admin, 'PUT', url, { max_waiting: 1 })).json()).toEqual({
      username: 'alice',
      limits: { max_waiting: 1, max_running: null, per_day: null },
    });
    const posts = promptPosts();
    const held = await heldIds();
    const r = await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('over') });
    expect(refused(r)).toEqual([429, 'QUEUE_LIMIT']);
    expect(r.json().error.details).toMatchObject({ limit: 'max_waiting', value: 1, resets_at: null });
    expect(r.json().error.details.current).toBeGreaterThanOrEqual(1);

    // max_running 0 refuses every prompt
    expect((await send(env.admin, 'PUT', url, { max_running: 0 })).status).toBe(200);
    const r0 = await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('none') });
    expect(refused(r0)).toEqual([429, 'QUEUE_LIMIT']);
    expect(r0.json().error.details).toMatchObject({ limit: 'max_running', value: 0 });

    // per_day: today's count is what she sent so far; the limit resets at the next UTC midnight
    expect((await send(env.admin, 'PUT', url, { per_day: 2 })).status).toBe(200);
    const rd = await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('day') });
    expect(refused(rd)).toEqual([429, 'QUOTA_EXCEEDED']);
    const midnight = new Date();
    midnight.setUTCHours(24, 0, 0, 0);
    expect(rd.json().error.details).toMatchObject({ limit: 'per_day', value: 2, resets_at: midnight.toISOString() });
    expect(rd.json().error.details.current).toBeGreaterThanOrEqual(2);

    // nothing of the refused prompts reached ComfyUI or the queue
    expect(promptPosts()).toBe(posts);
    expect(await heldIds()).toEqual(held);

    // DELETE drops the override: her prompts are accepted again
    expect((await send(env.admin, 'DELETE', url)).status).toBe(204);
    expect((await overrides()).alice).toBeUndefined();
    await post(env.alice, 'again');
  });
});

/**
 * Issue 12: with three fake ComfyUI workers, the caller's listings span every worker — /queue, /api/jobs and
 * /history merge what each worker holds (plus the gateway's held prompts), /history/{id} and /api/jobs/{id} go to
 * the worker that ran the prompt, deletes, clears and interrupts reach the worker that holds each prompt, and a
 * worker that is down only loses its part of a listing.
 */
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { eventually } from './helpers/queue';
import { postJson, raw, received, startIsolationEnv, until, type Caller, type IsolationEnv } from './isolation-env';

describe('three workers: listings, deletes and interrupts span them all', () => {
  let fakes: FakeComfy[];
  let env: IsolationEnv;
  beforeAll(async () => {
    fakes = [];
    for (let i = 0; i < 3; i++) fakes.push(await startFakeComfy({ promptDelayMs: 120_000 }));
    env = await startIsolationEnv({
      fakeInstance: fakes[0],
      config: {
        upstream: undefined,
        upstreams: fakes.map((f, i) => ({ url: f.url, name: `w${i + 1}` })),
        shared_input: fakes[0].inputDir,
      },
    });
  });
  afterAll(async () => {
    await env.close();
    for (const f of fakes) await f.close();
  });

  const post = async (c: Caller, tag: string) => {
    const r = await postJson(env.gw, '/prompt', c, { prompt: sampleWorkflow(tag) });
    expect(r.status).toBe(200);
    return r.json().prompt_id as string;
  };
  const get = async (c: Caller, path: string) => {
    const r = await raw(env.gw, 'GET', path, { headers: c.headers });
    expect(r.status).toBe(200);
    return r.json();
  };
  const where = (id: string) => fakes.findIndex((f) => f.prompts.has(id));
  const queueIds = (q: { queue_running: unknown[][]; queue_pending: unknown[][] }) => ({
    running: q.queue_running.map((e) => e[1] as string),
    pending: q.queue_pending.map((e) => e[1] as string),
  });
  const bodiesTo = (f: FakeComfy, path: RegExp) => received(f, path, 'POST').map((r) => JSON.parse(r.bodyText ?? '{}'));

  test('queued prompts: /queue and /api/jobs list every worker’s and the held ones; clear and interrupt reach each worker', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 8; i++) ids.push(await post(env.alice, `q${i}`));
    // each worker takes one running and one waiting; the last two stay held by the gateway
    await eventually(() => fakes.every((f) => ids.filter((id) => f.prompts.has(id)).length === 2), 30_000, 'two on each worker');
    await eventually(() => fakes.every((f) => [...f.prompts.values()].some((e) => e.state === 'running')), 30_000, 'all running');
    const held = ids.filter((id) => where(id) < 0);
    expect(held).toHaveLength(2);

    const q = queueIds(await get(env.alice, '/queue'));
    expect(q.running.sort()).toEqual(ids.filter((id) => where(id) >= 0 && fakes[where(id)].prompts.get(id).state === 'running').sort());
    expect([...q.running, ...q.pending].sort()).toEqual([...ids].sort());
    expect(q.pending.slice(-2)).toEqual(held); // held ones after the workers' own, in release order
    expect(queueIds(await get(env.bob, '/queue'))).toEqual({ running: [], pending: [] });
    const all = queueIds(await get(env.admin, '/queue'));
    expect([...all.running, ...all.pending].sort()).toEqual([...ids].sort());

    const jobs = await get(env.alice, '/api/jobs');
    expect(jobs.jobs.map((j: { id: string }) => j.id).sort()).toEqual([...ids].sort());
    expect(jobs.pagination.total).toBe(8);
    expect((await get(env.alice, '/api/jobs?limit=3')).jobs).toHaveLength(3);
    expect((await get(env.bob, '/api/jobs')).jobs).toEqual([]);
    const onW3 = ids.find((id) => where(id) === 2)!;
    expect((await get(env.alice, `/api/jobs/${onW3}`)).id).toBe(onW3);

    // an interrupt of her prompt on w3 goes to w3, with that prompt's id
    const running3 = ids.find((id) => where(id) === 2 && fakes[2].prompts.get(id).state === 'running')!;
    expect((await postJson(env.gw, '/interrupt', env.alice, { prompt_id: running3 })).status).toBe(200);
    expect(bodiesTo(fakes[2], /^\/(api\/)?interrupt$/)).toEqual([{ prompt_id: running3 }]);
    expect(bodiesTo(fakes[0], /^\/(api\/)?interrupt$/)).toEqual([]);
    await fakes[2].waitForPrompt(running3, 20_000);
    expect(fakes[2].prompts.get(running3).state).toBe('interrupted');

    // bob's clear and bob's interrupt touch nothing of hers
    for (const f of fakes) f.clearRequests();
    expect((await postJson(env.gw, '/queue', env.bob, { clear: true })).status).toBe(200);
    expect((await postJson(env.gw, '/interrupt', env.bob, {})).status).toBe(200);
    for (const f of fakes) for (const b of bodiesTo(f, /^\/(api\/)?(queue|interrupt)$/)) expect(ids).not.toContain(b.prompt_id);
    for (const f of fakes) for (const b of bodiesTo(f, /^\/(api\/)?queue$/)) expect(b.delete ?? []).toEqual([]);

    // her clear deletes her waiting prompts on every worker and the held ones
    const waiting = () => ids.filter((id) => where(id) >= 0 && fakes[where(id)].prompts.get(id).state === 'pending');
    const before = waiting().map((id) => ({ id, f: fakes[where(id)] }));
    expect(before.length).toBeGreaterThanOrEqual(2);
    expect((await postJson(env.gw, '/queue', env.alice, { clear: true })).status).toBe(200);
    for (const { id, f } of before) {
      expect(bodiesTo(f, /^\/(api\/)?queue$/).some((b) => (b.delete ?? []).includes(id))).toBe(true);
    }
    await until(async () => queueIds(await get(env.alice, '/queue')).pending.length === 0, 20_000, 'nothing of hers waiting');

    // an admin's interrupt without an id stops every worker
    expect((await postJson(env.gw, '/interrupt', env.admin, {})).status).toBe(200);
    for (const f of fakes) expect(received(f, /^\/(api\/)?interrupt$/, 'POST').length).toBeGreaterThan(0);
    await until(async () => queueIds(await get(env.admin, '/queue')).running.length === 0, 20_000, 'every worker idle');
  });

  test('finished prompts: /history merges every worker; by id, delete and clear go to each prompt’s worker; a dead worker only loses its part', async () => {
    for (const f of fakes) f.promptDelayMs = 150;
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push(await post(env.bob, `h${i}`));
    await eventually(() => ids.every((id) => where(id) >= 0), 30_000, 'all released');
    for (const id of ids) await fakes[where(id)].waitForPrompt(id, 30_000);
    const used = new Set(ids.map(where));
    expect(used.size).toBeGreaterThanOrEqual(2);

    const h = await get(env.bob, '/history');
    expect(Object.keys(h).sort()).toEqual([...ids].sort());
    expect(Object.keys(await get(env.alice, '/history')).some((id) => ids.includes(id))).toBe(false);
    // ComfyUI's order (oldest first); max_items keeps the newest, counted after merging
    const ended = (id: string) => Math.max(...fakes[where(id)].prompts.get(id).messages.map((m: [string, any]) => m[1].timestamp ?? 0));
    // (two workers may end prompts in the same millisecond: either order of such a tie is ComfyUI's order)
    const times = Object.keys(h).map(ended);
    expect(times).toEqual([...times].sort((a, b) => a - b));
    const byEnd = Object.keys(h);
    expect(Object.keys(await get(env.bob, '/history?max_items=2'))).toEqual(byEnd.slice(-2));
    expect(Object.keys(await get(env.admin, '/history?max_items=2'))).toEqual(byEnd.slice(-2));

    const elsewhere = ids.find((id) => where(id) > 0)!;
    const one = await get(env.bob, `/history/${elsewhere}`);
    expect(one[elsewhere].status.status_str).toBe('success');

    // a delete goes to the worker that has the entry
    const w = where(elsewhere);
    expect((await postJson(env.gw, '/history', env.bob, { delete: [elsewhere] })).status).toBe(200);
    expect(bodiesTo(fakes[w], /^\/(api\/)?history$/).some((b) => (b.delete ?? []).includes(elsewhere))).toBe(true);
    expect(fakes[w].prompts.has(elsewhere)).toBe(false);
    expect(Object.keys(await get(env.bob, '/history'))).toEqual(byEnd.filter((id) => id !== elsewhere));

    // a worker that is down: the listings answer with the others' part
    const down = [...used].find((i) => i > 0)!;
    const lost = ids.filter((id) => where(id) === down && id !== elsewhere);
    // (once the gateway has seen every prompt end: a worker that goes away while the gateway still counts a prompt
    // as running there fails that prompt, which is another test's matter)
    await until(
      async () =>
        (await get(env.admin, '/gateway/api/queue')).workers.every(
          (x: { running: number; waiting: number }) => x.running + x.waiting === 0,
        ),
      20_000,
      'the gateway saw every prompt end',
    );
    await fakes[down].stop();
    try {
      const rest = await get(env.bob, '/history');
      expect(Object.keys(rest).sort()).toEqual(ids.filter((id) => id !== elsewhere && !lost.includes(id)).sort());
      expect((await get(env.bob, '/queue')).queue_running).toEqual([]);
      expect((await get(env.bob, '/api/jobs')).jobs.length).toBeGreaterThan(0);
    } finally {
      await fakes[down].start();
    }

    // his clear empties his entries on every worker and leaves the others'
    const aliceIds = Object.keys(await get(env.admin, '/history')).filter((id) => !ids.includes(id));
    expect((await postJson(env.gw, '/history', env.bob, { clear: true })).status).toBe(200);
    for (const id of ids) expect(where(id)).toBe(-1);
    expect(aliceIds.every((id) => where(id) >= 0)).toBe(true);
  });
});

/**
 * Issue 12: several ComfyUI workers (two fake ones) behind one gateway — prompts spread over the workers with room,
 * everything about a prompt follows its worker (WebSocket events on the owner's one socket, /history/{id}, /view),
 * a worker going down gives its waiting prompts back to the queue and fails its running one naming the worker,
 * and a worker coming back rejoins by itself.
 */
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { eventually } from './helpers/queue';
import { postJson, raw, socket, startIsolationEnv, until, type Caller, type IsolationEnv } from './isolation-env';

const mine = (fake: FakeComfy, ids: string[]) => ids.filter((id) => fake.prompts.has(id));

describe('two workers', () => {
  let w1: FakeComfy;
  let w2: FakeComfy;
  let env: IsolationEnv;
  beforeAll(async () => {
    w1 = await startFakeComfy({ promptDelayMs: 500 });
    w2 = await startFakeComfy({ promptDelayMs: 500 });
    // w2 lacks one node class (a custom node installed on w1 only): the gateway learns it from w2's /object_info
    const server = w2 as unknown as { nodeDefs(): Record<string, unknown> };
    const defs = server.nodeDefs.bind(server);
    server.nodeDefs = () => {
      const d = { ...defs() };
      delete d.PreviewImage;
      return d;
    };
    env = await startIsolationEnv({
      fakeInstance: w1,
      config: {
        upstream: undefined,
        upstreams: [
          { url: w1.url, name: 'w1' },
          { url: w2.url, name: 'w2', tags: ['big'] },
        ],
        shared_input: w1.inputDir,
      },
    });
  });
  afterAll(async () => {
    await env.close();
    await w1.close();
    await w2.close();
  });

  const post = async (c: Caller, tag: string, clientId?: string) => {
    const r = await postJson(env.gw, '/prompt', c, { prompt: sampleWorkflow(tag), ...(clientId ? { client_id: clientId } : {}) });
    expect(r.status).toBe(200);
    return r.json().prompt_id as string;
  };

  test('prompts spread over both; events, history and files follow the worker', async () => {
    const ws = await socket(env.gw, env.alice, 'alice-many');
    try {
      const ids: string[] = [];
      for (let i = 0; i < 6; i++) ids.push(await post(i % 2 ? env.bob : env.alice, `m${i}`, i % 2 ? undefined : 'alice-many'));
      await eventually(() => mine(w1, ids).length + mine(w2, ids).length === ids.length, 20_000, 'all released');
      expect(mine(w1, ids).length).toBeGreaterThan(0);
      expect(mine(w2, ids).length).toBeGreaterThan(0);
      for (const id of ids) await (w1.prompts.has(id) ? w1 : w2).waitForPrompt(id, 20_000);
      const aliceOnW2 = ids.filter((id, i) => i % 2 === 0 && w2.prompts.has(id));
      const aliceOnW1 = ids.filter((id, i) => i % 2 === 0 && w1.prompts.has(id));
      // her one socket heard the end of every one of her prompts, whichever worker ran it
      for (const id of [...aliceOnW1, ...aliceOnW2])
        await ws.next((f) => f.json?.type === 'execution_success' && f.json.data.prompt_id === id, 10_000);
      const onW2 = aliceOnW2[0] ?? ids.find((id) => w2.prompts.has(id))!;
      const owner = ids.indexOf(onW2) % 2 ? env.bob : env.alice;
      const h = (await raw(env.gw, 'GET', `/history/${onW2}`, { headers: owner.headers })).json();
      expect(h[onW2].status.status_str).toBe('success');
      const img = h[onW2].outputs['9'].images[0];
      const view = await raw(env.gw, 'GET', `/view?${new URLSearchParams(img)}`, { headers: owner.headers });
      expect(view.status).toBe(200);
      expect(view.headers['content-type']).toMatch(/image\/png/);
      const health = (await raw(env.gw, 'GET', '/health', { headers: env.admin.headers })).json();
      expect(health.workers.map((w: { name: string; up: boolean }) => [w.name, w.up])).toEqual([
        ['w1', true],
        ['w2', true],
      ]);
    } finally {
      ws.close();
    }
  });

  test('a prompt needing a node class only one worker has goes only there', async () => {
    const withPreview = (tag: string) => ({ ...sampleWorkflow(tag), '10': { class_type: 'PreviewImage', inputs: { images: ['8', 0] } } });
    const ids = await Promise.all(
      Array.from({ length: 4 }, (_, i) =>
        postJson(env.gw, '/prompt', env.alice, { prompt: withPreview(`pv${i}`) }).then((r) => r.json().prompt_id as string),
      ),
    );
    // meanwhile w2 still takes prompts it can run
    const plain = await Promise.all([post(env.bob, 'plain0'), post(env.bob, 'plain1')]);
    for (const id of ids) await eventually(() => w1.prompts.has(id), 20_000, 'released to w1');
    for (const id of ids) await w1.waitForPrompt(id, 20_000);
    expect(mine(w2, ids)).toEqual([]);
    for (const id of plain) await eventually(() => w1.prompts.has(id) || w2.prompts.has(id), 20_000, 'released');
  });

  test('a worker going down: its waiting prompt runs on the other, its running one fails naming it; it rejoins', async () => {
    w2.promptDelayMs = 4000;
    w1.promptDelayMs = 300;
    const ws = await socket(env.gw, env.alice, 'alice-down');
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push(await post(env.alice, `d${i}`, 'alice-down'));
    await eventually(() => mine(w2, ids).length === 2, 20_000, 'two on w2');
    const onW2 = mine(w2, ids);
    const running = onW2.find((id) => w2.prompts.get(id).state === 'running')!;
    const waiting = onW2.find((id) => id !== running)!;
    await w2.stop();
    await eventually(() => w1.prompts.has(waiting), 20_000, 'the waiting prompt re-released to w1');
    await w1.waitForPrompt(waiting, 20_000);
    await until(
      async () => {
        const h = (await raw(env.gw, 'GET', `/history/${running}`, { headers: env.alice.headers })).json();
        return h[running]?.status?.status_str === 'error';
      },
      20_000,
      'the running prompt failed',
    );
    const h = (await raw(env.gw, 'GET', `/history/${running}`, { headers: env.alice.headers })).json();
    expect(JSON.stringify(h[running].status.messages)).toContain('w2');
    // her socket heard the failure, naming the worker
    const err = await ws.next((f) => f.json?.type === 'execution_error' && f.json.data.prompt_id === running, 10_000);
    expect(err.json.data.exception_type).toBe('WorkerDown');
    expect(err.json.data.exception_message).toContain('w2');
    ws.close();
    // workers are for admins' eyes only
    expect((await raw(env.gw, 'GET', '/health', { headers: env.alice.headers })).json()).not.toHaveProperty('workers');
    let health = (await raw(env.gw, 'GET', '/health', { headers: env.admin.headers })).json();
    expect(health.workers[1]).toMatchObject({ name: 'w2', up: false });
    w2.promptDelayMs = 100;
    await w2.start();
    await until(
      async () => {
        health = (await raw(env.gw, 'GET', '/health', { headers: env.admin.headers })).json();
        return health.workers[1].up === true;
      },
      20_000,
      'w2 back',
    );
    for (const id of ids) if (id !== running) await eventually(() => w1.prompts.has(id) || w2.prompts.has(id), 20_000, 'released');
  });
});

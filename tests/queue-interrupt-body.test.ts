/**
 * POST /interrupt with an unreadable body is 400 INVALID_BODY on one worker and on several (read as "no prompt_id"
 * it would stop whatever the caller runs on every worker): nothing reaches any ComfyUI and nothing is cancelled.
 * An empty body still means "no prompt_id" (ComfyUI's own reading).
 */
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { eventually } from './helpers/queue';
import { postJson, raw, startIsolationEnv, type IsolationEnv } from './isolation-env';

const interrupts = (fakes: FakeComfy[]) => fakes.flatMap((f) => f.requests.filter((r) => /^\/(api\/)?interrupt$/.test(r.rawPath)));

describe.each([1, 2])('POST /interrupt bodies, %i worker(s)', (n) => {
  let fakes: FakeComfy[];
  let env: IsolationEnv;
  beforeAll(async () => {
    fakes = await Promise.all(Array.from({ length: n }, () => startFakeComfy({ promptDelayMs: 60_000 })));
    const upstreams = fakes.map((f, i) => ({ url: f.url, name: `w${i + 1}` }));
    env = await startIsolationEnv({
      fakeInstance: fakes[0],
      config: n > 1 ? { upstream: undefined, upstreams, shared_input: fakes[0].inputDir } : {},
    });
  });
  afterAll(async () => {
    await env.close();
    await Promise.all(fakes.map((f) => f.close()));
  });

  test('malformed: 400 INVALID_BODY for users and admins, nothing proxied, nothing cancelled; empty: 200', async () => {
    const running = (await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('ib-run') })).json().prompt_id as string;
    await eventually(() => fakes.some((f) => f.prompts.get(running)?.start_time !== undefined), 20_000, 'running');
    for (const f of fakes) f.clearRequests();
    const count = async () => (await raw(env.gw, 'GET', '/prompt', { headers: env.alice.headers })).json().exec_info.queue_remaining;
    const before = await count();
    for (const who of [env.alice, env.admin])
      for (const body of ['{"prompt_id":', 'not json', '[1]', '"x"']) {
        const r = await raw(env.gw, 'POST', '/interrupt', { headers: { ...who.headers, 'Content-Type': 'application/json' }, body });
        expect([r.status, r.json().error?.code]).toEqual([400, 'INVALID_BODY']);
      }
    await new Promise((r) => setTimeout(r, 200));
    expect(interrupts(fakes)).toEqual([]);
    expect(await count()).toBe(before);
    expect(fakes.some((f) => f.prompts.get(running)?.interrupt)).toBe(false);
    // an empty body is "no prompt_id": the caller's running prompt stops
    const empty = await raw(env.gw, 'POST', '/interrupt', { headers: env.alice.headers });
    expect(empty.status).toBe(200);
    await eventually(() => fakes.some((f) => f.prompts.get(running)?.state === 'interrupted'), 10_000, 'interrupted');
  });
});

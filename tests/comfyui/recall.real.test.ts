/**
 * Issue 12, fairness under load, against real ComfyUI (both trees): the gateway takes a prompt back from the
 * worker's waiting slot (POST /queue {"delete"}) when another user's earlier turn arrives, and a prompt that
 * started before the delete reached ComfyUI stays — each prompt runs exactly once. A small HTTP relay between the
 * gateway and ComfyUI records what the gateway sent and can hold its POST /queue (the race).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { addUser, postJson, type Caller } from '../isolation-env';
import type { TestGateway } from '../helpers/gateway';
import { TREES, emptyImageWorkflow, startGatewayFor, startRealComfy, type RealComfy } from './realComfy';

/** A relay to `target` that records POST bodies and, while `holding`, keeps POST /queue unanswered. */
async function startRelay(target: string) {
  const t = new URL(target);
  const posts: { path: string; body: string }[] = [];
  let held: (() => void)[] = [];
  const relay = {
    posts,
    holding: false,
    url: '',
    release() {
      relay.holding = false;
      const h = held;
      held = [];
      h.forEach((f) => f());
    },
    server: http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        if (req.method === 'POST') posts.push({ path: req.url ?? '', body: body.toString() });
        const go = () => {
          const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
            res.writeHead(r.statusCode ?? 502, r.headers);
            r.pipe(res);
          });
          up.on('error', () => res.destroy());
          up.end(body);
        };
        if (relay.holding && req.method === 'POST' && /\/queue$/.test(req.url ?? '')) held.push(go);
        else go();
      });
    }),
  };
  await new Promise<void>((r) => relay.server.listen(0, '127.0.0.1', r));
  relay.url = `http://127.0.0.1:${(relay.server.address() as AddressInfo).port}`;
  return relay;
}

/** A workflow that runs for seconds on CPU (a wide blur of a 512² image); `color` defeats ComfyUI's cache. */
const slowWorkflow = (prefix: string, color: number) => ({
  '1': { class_type: 'EmptyImage', inputs: { width: 512, height: 512, batch_size: 1, color } },
  '3': { class_type: 'ImageBlur', inputs: { image: ['1', 0], blur_radius: 31, sigma: 1.0 } },
  '2': { class_type: 'SaveImage', inputs: { images: ['3', 0], filename_prefix: prefix } },
});

async function until(pred: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`${what} not reached within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.each(TREES)('taking a waiting prompt back, real ComfyUI %s', (tree) => {
  let comfy: RealComfy;
  let relay: Awaited<ReturnType<typeof startRelay>>;
  let gw: TestGateway;
  let alice: Caller;
  let bob: Caller;
  beforeAll(async () => {
    comfy = await startRealComfy(tree);
    relay = await startRelay(comfy.url);
    // no coalescing window: a user's second prompt goes into the waiting slot at once, as under load
    gw = await startGatewayFor({ ...comfy, url: relay.url }, { model_downloads: { enabled: false }, scheduler: { coalesce_ms: 0 } });
    alice = await addUser(gw, 'alice');
    bob = await addUser(gw, 'bob');
  }, 240_000);
  afterAll(async () => {
    relay?.release();
    await gw?.close();
    relay?.server.close();
    await comfy?.stop();
  }, 60_000);

  let color = 1;
  const post = async (c: Caller, prompt: Record<string, unknown>) => {
    const r = await postJson(gw, '/prompt', c, { prompt });
    expect(r.status).toBe(200);
    return r.json().prompt_id as string;
  };
  const comfyJson = async (p: string) => (await fetch(`${comfy.url}${p}`)).json() as Promise<any>;
  /** ComfyUI's own history entries (in the order they ran) whose SaveImage prefix contains `tag`. */
  const ran = async (tag: string) => {
    const h = (await comfyJson('/history')) as Record<string, { prompt: unknown[] }>;
    return Object.values(h).filter((e) => JSON.stringify(e.prompt[2]).includes(tag));
  };
  const order = async (tags: string[]) => {
    const h = (await comfyJson('/history')) as Record<string, { prompt: unknown[] }>;
    return Object.values(h)
      .map((e) => tags.find((t) => JSON.stringify(e.prompt[2]).includes(t)))
      .filter((t): t is string => !!t);
  };
  const deletes = () => relay.posts.filter((p) => /\/queue$/.test(p.path)).map((p) => JSON.parse(p.body));
  const sendsOf = (tag: string) => relay.posts.filter((p) => /\/prompt$/.test(p.path) && p.body.includes(tag)).length;
  const idle = () =>
    until(
      async () => {
        const q = await comfyJson('/queue');
        return q.queue_running.length + q.queue_pending.length === 0;
      },
      120_000,
      'ComfyUI idle',
    );

  test('bob’s first prompt takes the slot of alice’s second, which is held again and runs once, after it', async () => {
    const tag = `t1${tree}`;
    await post(alice, slowWorkflow(`${tag}-a1`, color++));
    await post(alice, emptyImageWorkflow(`${tag}-a2`, color++));
    await until(async () => (await comfyJson('/queue')).queue_pending.length === 1, 30_000, 'a2 waiting at ComfyUI');
    const d0 = deletes().length;
    await post(bob, emptyImageWorkflow(`${tag}-b1`, color++));
    await until(() => deletes().length > d0, 30_000, 'the delete sent');
    await until(async () => (await ran(`${tag}-a2`)).length === 1, 120_000, 'a2 ran');
    await idle();
    expect(await order([`${tag}-a1`, `${tag}-a2`, `${tag}-b1`])).toEqual([`${tag}-a1`, `${tag}-b1`, `${tag}-a2`]);
    expect(await ran(`${tag}-a2`)).toHaveLength(1);
    expect(sendsOf(`${tag}-a2`)).toBe(2); // taken back once, sent again once
  }, 240_000);

  test('a waiting prompt that started before the delete was answered stays: it runs once and is not sent again', async () => {
    const tag = `t2${tree}`;
    await post(alice, slowWorkflow(`${tag}-a1`, color++));
    await post(alice, emptyImageWorkflow(`${tag}-a2`, color++));
    await until(async () => (await comfyJson('/queue')).queue_pending.length === 1, 30_000, 'a2 waiting at ComfyUI');
    relay.holding = true;
    const d0 = deletes().length;
    await post(bob, emptyImageWorkflow(`${tag}-b1`, color++));
    await until(() => deletes().length > d0, 30_000, 'the delete sent (held by the relay)');
    // a1 ends and a2 starts (and may end) while the delete is on its way
    await until(async () => (await comfyJson('/queue')).queue_pending.length === 0, 120_000, 'a1 done, a2 started');
    relay.release();
    await until(async () => (await ran(`${tag}-b1`)).length === 1, 120_000, 'b1 ran');
    await idle();
    expect(await order([`${tag}-a1`, `${tag}-a2`, `${tag}-b1`])).toEqual([`${tag}-a1`, `${tag}-a2`, `${tag}-b1`]);
    expect(await ran(`${tag}-a2`)).toHaveLength(1);
    expect(sendsOf(`${tag}-a2`)).toBe(1);
    // nothing left behind: alice's count drops to 0 once the gateway's next read of ComfyUI's queue misses a2
    const count = async () =>
      ((await (await fetch(`${gw.url}/prompt`, { headers: alice.headers })).json()) as any).exec_info.queue_remaining;
    await until(async () => (await count()) === 0, 20_000, 'alice’s count 0');
  }, 240_000);
});

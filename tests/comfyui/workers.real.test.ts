/**
 * Issue 12 against two real ComfyUI processes (0.3.44): one gateway in front of both spreads prompts over them,
 * and each prompt's events, history and files follow the worker that ran it.
 */
import { openSocket } from '../helpers/ws';
import { startGateway, type TestGateway } from '../helpers/gateway';
import { TEST_KEY, emptyImageWorkflow, startRealComfy, type RealComfy } from './realComfy';

const KEY = { 'X-API-Key': TEST_KEY };

describe('two real ComfyUI workers behind one gateway', () => {
  let a: RealComfy;
  let b: RealComfy;
  let gw: TestGateway;
  beforeAll(async () => {
    [a, b] = await Promise.all([startRealComfy('0.3.44'), startRealComfy('0.3.44')]);
    gw = await startGateway({
      api_key: TEST_KEY,
      upstreams: [
        { url: a.url, name: 'a' },
        { url: b.url, name: 'b' },
      ],
      shared_input: a.inputDir,
      model_downloads: { enabled: false },
    });
  }, 400_000);
  afterAll(async () => {
    await gw?.close();
    await Promise.all([a?.stop(), b?.stop()]);
  }, 60_000);

  test('prompts run on both; events reach one socket; /history and /view follow the worker', async () => {
    const ws = await openSocket(`${gw.url.replace(/^http/, 'ws')}/ws?clientId=two-workers`, KEY);
    try {
      const posts = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          fetch(`${gw.url}/prompt`, {
            method: 'POST',
            headers: { ...KEY, 'content-type': 'application/json' },
            body: JSON.stringify({ prompt: emptyImageWorkflow(`two${i}`, i * 1000), client_id: 'two-workers' }),
          }).then((r) => r.json() as Promise<{ prompt_id: string }>),
        ),
      );
      const ids = posts.map((p) => p.prompt_id);
      for (const id of ids) await ws.next((f) => f.json?.type === 'execution_success' && f.json.data.prompt_id === id, 120_000);
      const ranOn = async (c: RealComfy, id: string) =>
        Object.keys((await (await fetch(`${c.url}/history/${id}`)).json()) as object).length > 0;
      const onA = [];
      const onB = [];
      for (const id of ids) {
        if (await ranOn(b, id)) onB.push(id);
        else if (await ranOn(a, id)) onA.push(id);
      }
      expect(onA.length + onB.length).toBe(ids.length);
      expect(onA.length).toBeGreaterThan(0);
      expect(onB.length).toBeGreaterThan(0);
      // the listing spans both workers: every prompt in /history, max_items counted after merging (these ComfyUI
      // versions have no /api/jobs)
      const all = (await (await fetch(`${gw.url}/history`, { headers: KEY })).json()) as Record<string, unknown>;
      for (const x of ids) expect(Object.keys(all)).toContain(x);
      const two = (await (await fetch(`${gw.url}/history?max_items=2`, { headers: KEY })).json()) as Record<string, unknown>;
      expect(Object.keys(two)).toHaveLength(2);
      const id = onB[0];
      const h = (await (await fetch(`${gw.url}/history/${id}`, { headers: KEY })).json()) as Record<string, any>;
      expect(h[id].status.status_str).toBe('success');
      const img = h[id].outputs['2'].images[0];
      const view = await fetch(`${gw.url}/view?${new URLSearchParams(img)}`, { headers: KEY });
      expect(view.status).toBe(200);
      expect(view.headers.get('content-type')).toMatch(/image\/png/);
    } finally {
      ws.close();
    }
  }, 300_000);
});

/**
 * Issue 13 against a real ComfyUI (0.3.44): two gateway replicas on one PostgreSQL, and a prompt posted through
 * the one that does not release gets the real ComfyUI's own answer, passed on by the releaser — the 400 with
 * node_errors of an invalid workflow exactly as ComfyUI gives it directly, and the 200 of a valid one.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnGateway, type ChildGateway } from '../helpers/child';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/pg';
import { TEST_KEY, emptyImageWorkflow, startRealComfy, type RealComfy } from './realComfy';

const KEY = { 'X-API-Key': TEST_KEY, 'content-type': 'application/json' };
const RELEASES = /now releases the held prompts/;

describe('two gateway replicas in front of a real ComfyUI', () => {
  let comfy: RealComfy;
  let db: TestDatabase;
  let dir: string;
  const replicas: ChildGateway[] = [];
  beforeAll(async () => {
    [comfy, db] = await Promise.all([startRealComfy('0.3.44'), createTestDatabase()]);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-real-replicas-'));
    for (let i = 0; i < 2; i++) {
      const file = path.join(dir, `r${i}.json`);
      fs.writeFileSync(
        file,
        JSON.stringify({
          host: '127.0.0.1',
          port: 0,
          upstream: comfy.url,
          api_key: TEST_KEY,
          data_dir: path.join(dir, `data${i}`),
          log_levels: ['info'],
          store: { kind: 'postgres', url: db.url },
          redis: { url: 'redis://127.0.0.1:6379', key_prefix: `cgw-real-${path.basename(dir)}:` },
          model_downloads: { enabled: false },
        }),
      );
      replicas.push(await spawnGateway(['--config', file], { COMFYUI_GATEWAY_HF_TOKEN_KEY: '5b'.repeat(32) }));
    }
  }, 400_000);
  afterAll(async () => {
    for (const r of replicas) r.kill('SIGKILL');
    await Promise.all(replicas.map((r) => r.exited));
    await comfy?.stop();
    await db?.drop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  const post = (base: string, prompt: Record<string, unknown>) =>
    fetch(`${base}/prompt`, { method: 'POST', headers: KEY, body: JSON.stringify({ prompt }) }).then(async (r) => ({
      status: r.status,
      body: (await r.json()) as Record<string, any>,
    }));

  test("the replica that does not release answers with ComfyUI's own 400 (node_errors) and 200", async () => {
    const follower = (await eventually(
      () => {
        const held = replicas.map((r) => RELEASES.test(r.stdout() + r.stderr()));
        return held.filter(Boolean).length === 1 && replicas[held.indexOf(false)];
      },
      30_000,
      'one releaser',
    )) as ChildGateway;
    // a width below EmptyImage's minimum: ComfyUI refuses it at validation
    const bad = () => ({
      ...emptyImageWorkflow('bad'),
      '1': { class_type: 'EmptyImage', inputs: { width: -5, height: 64, batch_size: 1, color: 0 } },
    });
    const direct = await post(comfy.url, bad());
    expect(direct.status).toBe(400);
    const via = await post(follower.url, bad());
    expect(via.status).toBe(400);
    expect(via.body).toEqual(direct.body);
    expect(Object.keys(via.body.node_errors)).toEqual(['1']);

    const ok = await post(follower.url, emptyImageWorkflow('via-follower'));
    expect(ok.status).toBe(200);
    expect(ok.body.node_errors).toEqual({});
    const id = ok.body.prompt_id as string;
    const h = await eventually(
      async () => {
        const r = (await (await fetch(`${comfy.url}/history/${id}`)).json()) as Record<string, any>;
        return r[id]?.status?.completed ? r[id] : null;
      },
      120_000,
      'the prompt ran on ComfyUI',
    );
    // ComfyUI's own number for it (the gateway's number of a held prompt would come from the shared counter)
    expect(ok.body.number).toBe(h.prompt[0]);
  }, 300_000);
});

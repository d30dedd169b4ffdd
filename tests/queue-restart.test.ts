/**
 * Issue 12: prompts the gateway holds are persisted before the 200 (journal, fsync) and released in order after the
 * gateway process is killed and started again; nothing is sent twice.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnGateway, type ChildGateway } from './helpers/child';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { TEST_KEY } from './helpers/gateway';
import { eventually } from './helpers/queue';
import { postJson, raw } from './isolation-env';

const ADMIN = { name: 'api-key', headers: { 'X-API-Key': TEST_KEY } };

/** The gateway prompt ids in the order they reached the fake ComfyUI. */
const arrivals = (fake: FakeComfy) =>
  fake.requests
    .filter((r) => r.method === 'POST' && /prompt$/.test(r.rawPath) && r.bodyText)
    .map((r) => JSON.parse(r.bodyText!).prompt_id as string);

describe('held prompts across a restart', () => {
  let fake: FakeComfy;
  let dir: string;
  let child: ChildGateway | null = null;
  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 1200 });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-queue-restart-'));
    fs.writeFileSync(
      path.join(dir, 'config.json'),
      JSON.stringify({
        host: '127.0.0.1',
        port: 0,
        upstream: fake.url,
        api_key: TEST_KEY,
        data_dir: path.join(dir, 'data'),
        log_levels: ['warn'],
        bcrypt_cost: 4,
        model_downloads: { enabled: false },
      }),
    );
  });
  afterAll(async () => {
    child?.kill('SIGKILL');
    await child?.exited;
    await fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('killed with four held: the restarted gateway releases them in order, each once', async () => {
    child = await spawnGateway(['--config', path.join(dir, 'config.json')]);
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await postJson({ port: child.port }, '/prompt', ADMIN, { prompt: sampleWorkflow(`r${i}`) });
      expect(r.status).toBe(200);
      ids.push(r.json().prompt_id);
    }
    // one running and one waiting at ComfyUI; the other four only in the gateway's journal
    expect(arrivals(fake)).toEqual(ids.slice(0, 2));
    child.kill('SIGKILL');
    await child.exited;
    child = await spawnGateway(['--config', path.join(dir, 'config.json')]);
    const q = (await raw({ port: child.port }, 'GET', '/queue', { headers: ADMIN.headers })).json();
    // the four held ones wait behind whatever ComfyUI still has of the first two (a loaded machine restarts slowly)
    const left = [...q.queue_running, ...q.queue_pending].map((e: unknown[]) => e[1]);
    expect(left).toEqual(ids.slice(ids.length - left.length));
    expect(left.length).toBeGreaterThanOrEqual(4);
    await eventually(() => arrivals(fake).length === ids.length, 30_000, 'every prompt released');
    expect(arrivals(fake)).toEqual(ids);
    for (const id of ids) await fake.waitForPrompt(id, 30_000);
    const h = (await raw({ port: child.port }, 'GET', `/history/${ids[5]}`, { headers: ADMIN.headers })).json();
    expect(h[ids[5]].status.status_str).toBe('success');
  });
});

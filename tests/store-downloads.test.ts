/** Issue 13: model downloads across replicas — seen and cancellable from any, never fetched twice. */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { callApi, startFakeHf, waitFor, type FakeHf } from './helpers/fakeHf';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { createTestDatabase, type TestDatabase } from './helpers/pg';
import { createTestRedisPrefix } from './helpers/redis';

const KEY = { 'x-api-key': TEST_KEY };
const ENV = { COMFYUI_GATEWAY_HF_TOKEN_KEY: '12'.repeat(32) };
let hf: FakeHf;
let db: TestDatabase;
let redis: Awaited<ReturnType<typeof createTestRedisPrefix>>;
let a: TestGateway;
let b: TestGateway;
let modelsDir: string;
let config: Record<string, unknown>;

const post = (gw: TestGateway, p: string, body?: unknown) => callApi(gw.url, 'POST', p, body, KEY);
const entry = async (gw: TestGateway, id: string, url: string) =>
  (await post(gw, '/api/models-availability-status', { models: { [id]: url } })).body.models[id];
const tmpFiles = () => fs.readdirSync(path.join(modelsDir, 'checkpoints')).filter((n) => n.endsWith('.tmp'));

beforeAll(async () => {
  hf = await startFakeHf();
  db = await createTestDatabase();
  redis = await createTestRedisPrefix();
  // Both replicas write into the same models folder (the one ComfyUI reads), as on a shared volume.
  modelsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-models-'));
  fs.mkdirSync(path.join(modelsDir, 'checkpoints'));
  config = {
    api_key: TEST_KEY,
    upstream: 'http://127.0.0.1:9',
    comfyui: { models_dir: modelsDir },
    model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost], max_concurrent: 2 },
    hf_oauth: { client_id: hf.clientId, callback_port: 0 },
    store: { kind: 'postgres', url: db.url },
    redis: { url: redis.url, key_prefix: redis.prefix },
  };
  a = await startGateway(config, { env: { HF_ENDPOINT: hf.url, ...ENV } });
  b = await startGateway(config, { env: { HF_ENDPOINT: hf.url, ...ENV } });
});
afterAll(async () => {
  await a?.close();
  await b?.close();
  await hf?.close();
  await redis?.drop();
  await db?.drop();
  fs.rmSync(modelsDir, { recursive: true, force: true });
});

test('a download started via A is visible via B, refused again via B, and cancellable via B', async () => {
  const f = hf.addFile('org/slow', 'slow.safetensors', crypto.randomBytes(300_000), { throttleBytesPerSec: 60_000 });
  expect((await post(a, '/api/download-models', { models: { 'checkpoints/slow.safetensors': f.url } })).status).toBe(202);
  const seen = await waitFor(async () => {
    const x = await entry(b, 'checkpoints/slow.safetensors', f.url);
    return x.state === 'downloading' && x.progress.bytes_downloaded > 0 ? x : null;
  });
  expect(seen.progress.total_bytes).toBe(300_000);
  const dup = await post(b, '/api/download-models', { models: { 'checkpoints/slow.safetensors': f.url } });
  expect([dup.status, dup.body.error.code]).toEqual([409, 'ALREADY_DOWNLOADING']);
  const c = await post(b, '/api/cancel-model-download-session', { model_id: 'checkpoints/slow.safetensors' });
  expect([c.status, c.body]).toEqual([200, { cancelled: true }]);
  // A stops it: no longer downloading anywhere, no temp file, no model.
  await waitFor(async () => (await entry(a, 'checkpoints/slow.safetensors', f.url)).state === 'missing');
  await waitFor(() => tmpFiles().length === 0);
  expect(fs.existsSync(path.join(modelsDir, 'checkpoints', 'slow.safetensors'))).toBe(false);
  expect((await entry(b, 'checkpoints/slow.safetensors', f.url)).state).toBe('missing');
});

test('the same model asked of both replicas at once is fetched once', async () => {
  const f = hf.addFile('org/once', 'once.safetensors', crypto.randomBytes(100_000), { throttleBytesPerSec: 200_000 });
  const id = 'checkpoints/once.safetensors';
  const [ra, rb] = await Promise.all([
    post(a, '/api/download-models', { models: { [id]: f.url } }),
    post(b, '/api/download-models', { models: { [id]: f.url } }),
  ]);
  // Each answered started or already-downloading; whichever, exactly one download happened.
  for (const r of [ra, rb]) expect([202, 409]).toContain(r.status);
  await waitFor(async () => (await entry(a, id, f.url)).state === 'available', 20_000);
  expect(hf.count('once.safetensors', 'cdn')).toBe(1);
  expect(fs.readFileSync(path.join(modelsDir, 'checkpoints', 'once.safetensors')).length).toBe(100_000);
  expect(tmpFiles()).toEqual([]);
});

test("a replica starting mid-download (a rolling upgrade) leaves the other's partial file alone; a dead one's goes", async () => {
  const f = hf.addFile('org/rolling', 'rolling.safetensors', crypto.randomBytes(200_000), { throttleBytesPerSec: 100_000 });
  const id = 'checkpoints/rolling.safetensors';
  expect((await post(a, '/api/download-models', { models: { [id]: f.url } })).status).toBe(202);
  const tmp = await waitFor(() => tmpFiles().find((n) => n.startsWith('rolling.')) ?? null);
  // An orphan of a crashed run (no claim in Redis) next to it.
  const orphan = path.join(modelsDir, 'checkpoints', 'crashed.safetensors.1000.tmp');
  fs.writeFileSync(orphan, 'partial');
  const c = await startGateway(config, { env: { HF_ENDPOINT: hf.url, ...ENV } });
  try {
    expect(fs.existsSync(orphan)).toBe(false);
    expect(tmpFiles()).toContain(tmp);
    await waitFor(async () => (await entry(a, id, f.url)).state === 'available', 20_000);
    expect(fs.readFileSync(path.join(modelsDir, 'checkpoints', 'rolling.safetensors')).length).toBe(200_000);
  } finally {
    await c.close();
  }
});

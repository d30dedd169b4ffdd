/**
 * Issue 13: what a single gateway kept in files of its data_dir and replicas must share — the list of each user's
 * uploads (loader dropdowns on a ComfyUI whose input folder the gateway cannot read) and the model roots learned
 * from ComfyUI (the start-up sweep of orphaned partial downloads). Child replicas, each with a data_dir of its own,
 * on one PostgreSQL and one Redis.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import request from 'supertest';
import { login, registerFirstAdmin, registerUser } from './helpers/auth';
import type { ChildGateway } from './helpers/child';
import { spawnReplica } from './helpers/replicas';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { callApi, startFakeHf, type FakeHf } from './helpers/fakeHf';
import { createTestDatabase, eventually, type TestDatabase } from './helpers/pg';
import { createTestRedisPrefix } from './helpers/redis';

jest.setTimeout(120_000);

const ENV = { COMFYUI_GATEWAY_HF_TOKEN_KEY: '3c'.repeat(32) };
const KEY = 'replicas-files-api-key-0123456789';
let db: TestDatabase;
let redis: Awaited<ReturnType<typeof createTestRedisPrefix>>;
let legacy: FakeComfy;
let modern: FakeComfy;
let hf: FakeHf;
let dir: string;
const children: ChildGateway[] = [];

/** A replica as its own process, with a data_dir of its own (nothing shared through files). */
async function replica(name: string, extra: Record<string, unknown>): Promise<ChildGateway> {
  const gw = await spawnReplica({
    dir,
    name,
    dbUrl: db.url,
    redis,
    config: { log_levels: ['warn'], model_downloads: undefined, ...extra },
    env: { ...ENV, HF_ENDPOINT: hf.url },
  });
  children.push(gw);
  return gw;
}

beforeAll(async () => {
  db = await createTestDatabase();
  redis = await createTestRedisPrefix();
  // Like ComfyUI 7914c47: no argv, no /internal/folder_paths, so the gateway cannot know the input folder.
  legacy = await startFakeComfy({ legacy: true });
  modern = await startFakeComfy();
  hf = await startFakeHf();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-replicas-files-'));
});
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await Promise.all(children.map((c) => c.exited));
  await legacy?.close();
  await modern?.close();
  await hf?.close();
  await redis?.drop();
  await db?.drop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const png = (name: string) => {
  const boundary = 'b0undary';
  return {
    type: `multipart/form-data; boundary=${boundary}`,
    body: Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="${name}"\r\nContent-Type: image/png\r\n\r\n`),
      Buffer.from('\x89PNG\r\n\x1a\n'),
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]),
  };
};
const loadImageOptions = async (gw: ChildGateway, token: string): Promise<string[]> => {
  const r = await request(gw.url).get('/object_info/LoadImage').set('Authorization', `Bearer ${token}`);
  expect(r.status).toBe(200);
  return r.body.LoadImage.input.required.image[0] as string[];
};

test("an upload through replica A is in its owner's LoadImage list through B and through a replica started later", async () => {
  const a = await replica('a', { upstream: legacy.url });
  const b = await replica('b', { upstream: legacy.url });
  await registerFirstAdmin(a);
  await registerUser(a, 'alice');
  await registerUser(a, 'bob');
  const alice = (await login(b, 'alice')).token;
  const bob = (await login(a, 'bob')).token;
  const up = png('shared-upload.png');
  const r = await request(a.url).post('/upload/image').set('Authorization', `Bearer ${alice}`).set('Content-Type', up.type).send(up.body);
  expect([r.status, r.body.subfolder]).toEqual([200, 'alice']);
  await eventually(async () => (await loadImageOptions(b, alice)).includes('alice/shared-upload.png'), 10_000, 'the upload listed via B');
  expect((await loadImageOptions(b, bob)).some((o) => o.includes('shared-upload'))).toBe(false);
  // B has it from the shared store: after sign-ups, sign-ins and an upload, each data_dir holds only its own log.
  for (const r of ['a', 'b']) expect(fs.readdirSync(path.join(dir, r, 'data'), { recursive: true })).toEqual(['comfyui-gateway.log']);
  // A replica that starts afterwards reads it at start.
  const c = await replica('c', { upstream: legacy.url });
  expect(await loadImageOptions(c, alice)).toContain('alice/shared-upload.png');
  expect(await loadImageOptions(c, bob)).not.toContain('alice/shared-upload.png');
});

test('model roots learned by one replica let another, started without ComfyUI, sweep an orphaned partial download', async () => {
  const downloads = { api_key: KEY, model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost] } };
  const a = await replica('roots-a', { upstream: modern.url, ...downloads });
  // A learns ComfyUI's folder paths when it is first asked about models.
  const st = await callApi(
    a.url,
    'POST',
    '/api/models-availability-status',
    { models: { 'checkpoints/x.safetensors': 'https://x' } },
    {
      'x-api-key': KEY,
    },
  );
  expect(st.status).toBe(200);
  const checkpoints = path.join(modern.modelsDir, 'checkpoints');
  const sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  try {
    await eventually(
      async () => {
        const r = await sql.query("SELECT value FROM gw_docs WHERE coll = 'download_roots' AND key = 'roots'");
        return (r.rows[0]?.value as string[] | undefined)?.includes(checkpoints);
      },
      10_000,
      'the roots in the shared store',
    );
  } finally {
    await sql.end();
  }
  expect(fs.existsSync(path.join(dir, 'roots-a', 'data', 'model_download_roots.json'))).toBe(false);
  // A partial file of a crashed run (an epoch far in the past), on the models volume every replica sees.
  fs.mkdirSync(checkpoints, { recursive: true });
  const orphan = path.join(checkpoints, 'crashed.safetensors.1000.tmp');
  fs.writeFileSync(orphan, 'partial');
  // B has a fresh data_dir and no ComfyUI at all: it can only know the roots from the shared store.
  await replica('roots-b', { upstream: 'http://127.0.0.1:9', ...downloads });
  expect(fs.existsSync(orphan)).toBe(false);
});

/**
 * Issue 13 against real ComfyUI 7914c47 (which reports no input folder, so loader lists come from the gateway's record
 * of uploads): two replicas on one PostgreSQL and Redis — an upload through A is in its owner's LoadImage list
 * through B, in nobody else's, and a prompt sent through B loads it.
 */
import { login, registerFirstAdmin, registerUser } from '../helpers/auth';
import { startGateway, type TestGateway } from '../helpers/gateway';
import { makePng } from '../helpers/png';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/pg';
import { createTestRedisPrefix } from '../helpers/redis';
import { startRealComfy, TEST_KEY, type RealComfy } from './realComfy';

const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
const ENV = { COMFYUI_GATEWAY_HF_TOKEN_KEY: '7e'.repeat(32) };
let comfy: RealComfy;
let db: TestDatabase;
let redis: Awaited<ReturnType<typeof createTestRedisPrefix>>;
let a: TestGateway;
let b: TestGateway;

beforeAll(async () => {
  comfy = await startRealComfy('7914c47');
  db = await createTestDatabase();
  redis = await createTestRedisPrefix();
  const config = { store: { kind: 'postgres', url: db.url }, redis: { url: redis.url, key_prefix: redis.prefix } };
  a = await startGateway({ upstream: comfy.url, api_key: TEST_KEY, ...config }, { env: ENV });
  b = await startGateway({ upstream: comfy.url, api_key: TEST_KEY, ...config }, { env: ENV });
}, 240_000);
afterAll(async () => {
  await a?.close();
  await b?.close();
  await comfy?.stop();
  await redis?.drop();
  await db?.drop();
}, 60_000);

test('an upload through replica A is listed and loadable through replica B, for its owner only', async () => {
  await registerFirstAdmin(a);
  await registerUser(a, 'alice');
  await registerUser(b, 'bob');
  const alice = (await login(b, 'alice')).token;
  const bob = (await login(a, 'bob')).token;
  const form = new FormData();
  form.append('image', new Blob([new Uint8Array(makePng({ width: 8, height: 8 }))], { type: 'image/png' }), `rep-${Date.now()}.png`);
  const up = await fetch(`${a.url}/upload/image`, { method: 'POST', headers: bearer(alice), body: form });
  expect(up.status).toBe(200);
  const answer = (await up.json()) as { name: string; subfolder: string };
  expect(answer.subfolder).toBe('alice');
  const list = async (token: string) => {
    const j = (await (await fetch(`${b.url}/object_info/LoadImage`, { headers: bearer(token) })).json()) as any;
    return j.LoadImage.input.required.image[0] as string[];
  };
  await eventually(async () => (await list(alice)).includes(`alice/${answer.name}`), 10_000, 'the upload listed via B');
  expect((await list(bob)).some((f) => f.includes(answer.name))).toBe(false);
  const res = await fetch(`${b.url}/prompt`, {
    method: 'POST',
    headers: { ...bearer(alice), 'content-type': 'application/json' },
    body: JSON.stringify({
      prompt: {
        '1': { class_type: 'LoadImage', inputs: { image: answer.name } },
        '2': { class_type: 'SaveImage', inputs: { images: ['1', 0], filename_prefix: 'replica' } },
      },
    }),
  });
  expect(res.status).toBe(200);
});

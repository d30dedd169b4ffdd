/**
 * upstream_timeout_s (issue 9): ComfyUI gets that long to start answering — on the streaming proxy and on the
 * routes the gateway reads itself — and the client gets 504 UPSTREAM_TIMEOUT instead of waiting forever. Once the
 * headers came, a body streams for as long as it needs (a long /view). Checked from outside against the fake.
 */
import fs from 'node:fs';
import path from 'node:path';
import { adminAndUser } from './helpers/auth';
import { hit } from './helpers/edge';
import { TEST_KEY } from './helpers/gateway';
import { useStack } from './helpers/stack';
import { clientTraffic } from './helpers/traffic';

const TIMEOUT_S = 1.5;
const stack = useStack({ upstream_timeout_s: TIMEOUT_S });
const key = { 'X-API-Key': TEST_KEY };
let alice: { token: string };

beforeAll(async () => {
  ({ user: alice } = await adminAndUser(stack.gw, 'alice'));
});
afterEach(() => stack.fake.clearStalls());

async function timed<T>(p: Promise<T>): Promise<[T, number]> {
  const t0 = Date.now();
  const v = await p;
  return [v, Date.now() - t0];
}

describe('upstream_timeout_s', () => {
  test('routes ComfyUI never answers get 504 UPSTREAM_TIMEOUT after the timeout (proxied GET, its /api twin, POST, and a route the gateway reads)', async () => {
    stack.fake.stall({ path: '/embeddings', beforeHeadersMs: null });
    stack.fake.stall({ path: '/free', method: 'POST', beforeHeadersMs: null });
    stack.fake.stall({ path: '/queue', beforeHeadersMs: null });
    stack.fake.clearRequests();
    const cases: [string, string, Record<string, string>, unknown?][] = [
      ['GET', '/embeddings', key],
      ['GET', '/api/embeddings', key],
      ['POST', '/free', key, { unload_models: false }],
      ['GET', '/queue', { Authorization: `Bearer ${alice.token}` }],
    ];
    const answers = await Promise.all(cases.map(([method, p, headers, body]) => timed(hit(stack.gw.url, p, { method, headers, body }))));
    answers.forEach(([r, ms], i) => {
      expect([cases[i][1], r.status, r.body?.error?.code]).toEqual([cases[i][1], 504, 'UPSTREAM_TIMEOUT']);
      expect(r.body.error.message).toMatch(/did not start answering/);
      // not before the timeout, and not much after it
      expect(ms).toBeGreaterThanOrEqual(TIMEOUT_S * 1000 - 50);
      expect(ms).toBeLessThan(TIMEOUT_S * 1000 + 10_000);
    });
    // they were forwarded (it is ComfyUI that is slow, not a refusal)
    const seen = clientTraffic(stack.fake).map((r) => r.rawPath.split('?')[0]);
    expect(seen).toEqual(expect.arrayContaining(['/embeddings', '/api/embeddings', '/free', '/queue']));
    // the timed-out requests left nothing behind: the same routes answer once ComfyUI does
    stack.fake.clearStalls();
    for (const [method, p, headers, body] of cases) expect((await hit(stack.gw.url, p, { method, headers, body })).status).toBe(200);
  });

  test('an answer slower than usual but inside the timeout passes untouched', async () => {
    stack.fake.stall({ path: '/embeddings', beforeHeadersMs: 300 });
    const r = await hit(stack.gw.url, '/embeddings', { headers: key });
    expect(r.status).toBe(200);
    expect(Array.isArray(r.body)).toBe(true);
  });

  test('a /view body that stops for longer than the timeout after its headers still streams through whole', async () => {
    const dir = path.join(stack.fake.outputDir, 'alice');
    fs.mkdirSync(dir, { recursive: true });
    const data = Buffer.alloc(256 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    fs.writeFileSync(path.join(dir, 'slow.bin'), data);
    stack.fake.stall({ path: '/view', midBodyMs: TIMEOUT_S * 1000 + 1000 });
    const [r, ms] = await timed(
      new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
        const u = new URL(`${stack.gw.url}/view?filename=slow.bin&subfolder=alice&type=output`);
        require('node:http')
          .get(u, { headers: { Authorization: `Bearer ${alice.token}` } }, (res: import('node:http').IncomingMessage) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
            res.on('error', reject);
          })
          .on('error', reject);
      }),
    );
    expect(r.status).toBe(200);
    expect(ms).toBeGreaterThanOrEqual(TIMEOUT_S * 1000 + 900);
    expect(r.body.equals(data)).toBe(true);
  });
});

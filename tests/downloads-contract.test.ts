/**
 * Issue 6: ComfyUI's server-side model-download API served by the gateway — the contract (paths, bodies, status and
 * error codes), downloads end to end against the fake HuggingFace, cancellation, hashes, resume, queueing, storage.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startGateway, TEST_KEY, flushedLogs, type TestGateway } from './helpers/gateway';
import { callApi, startFakeHf, waitFor, type FakeHf } from './helpers/fakeHf';

const KEY = { 'x-api-key': TEST_KEY };
const rand = (n: number) => crypto.randomBytes(n);

let hf: FakeHf;
let gw: TestGateway;
let modelsDir: string;
const post = (p: string, body?: unknown, h: Record<string, string> = KEY) => callApi(gw.url, 'POST', p, body, h);
const status = async (models: Record<string, unknown>) => (await post('/api/models-availability-status', { models })).body;
const entry = async (id: string, url: string) => (await status({ [id]: url })).models[id];

beforeAll(async () => {
  hf = await startFakeHf();
  modelsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-models-'));
  fs.mkdirSync(path.join(modelsDir, 'checkpoints'));
  fs.mkdirSync(path.join(modelsDir, 'custom_nodes'));
  fs.mkdirSync(path.join(modelsDir, 'configs'));
  fs.writeFileSync(path.join(modelsDir, 'checkpoints', 'have.safetensors'), 'x');
  gw = await startGateway(
    {
      api_key: TEST_KEY,
      upstream: 'http://127.0.0.1:9',
      comfyui: { models_dir: modelsDir },
      model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost], max_concurrent: 2 },
      hf_oauth: { client_id: hf.clientId, callback_port: 0 },
    },
    { env: { HF_ENDPOINT: hf.url } },
  );
});

afterAll(async () => {
  await gw?.close();
  await hf?.close();
  fs.rmSync(modelsDir, { recursive: true, force: true });
});

const tmpFiles = (dir = 'checkpoints') => fs.readdirSync(path.join(modelsDir, dir)).filter((n) => n.endsWith('.tmp'));

describe('POST /api/models-availability-status', () => {
  test('reports state, progress, size and downloadability per id, plus hf_auth', async () => {
    const pub = hf.addFile('org/public', 'pub.safetensors', rand(1000));
    const gated = hf.addFile('org/gated', 'g.safetensors', rand(500), { gated: true });
    const res = await post('/api/models-availability-status', {
      models: {
        'checkpoints/have.safetensors': pub.url,
        'checkpoints/pub.safetensors': pub.url,
        'loras/g.safetensors': gated.url,
        '../etc/passwd': pub.url,
        'custom_nodes/evil.safetensors': pub.url,
        'checkpoints/notallowed.safetensors': 'https://example.com/x.safetensors',
      },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(res.body).toEqual({
      models: {
        'checkpoints/have.safetensors': { state: 'available', progress: null, file_size: 1000, is_hf_downloadable: true },
        'checkpoints/pub.safetensors': { state: 'missing', progress: null, file_size: 1000, is_hf_downloadable: true },
        'loras/g.safetensors': { state: 'missing', progress: null, file_size: null, is_hf_downloadable: false },
        '../etc/passwd': { state: 'missing', progress: null, file_size: 1000, is_hf_downloadable: true },
        'custom_nodes/evil.safetensors': { state: 'missing', progress: null, file_size: 1000, is_hf_downloadable: true },
        'checkpoints/notallowed.safetensors': { state: 'missing', progress: null, file_size: null, is_hf_downloadable: null },
      },
      hf_auth: { token_available: false, eligible: true },
    });
    // nothing was fetched for a host that is not allow-listed, and no token went anywhere
    expect(hf.requests.every((r) => !r.headers.authorization)).toBe(true);
  });

  test('an empty or absent models map is fine; malformed JSON and wrong shapes are 400', async () => {
    expect((await post('/api/models-availability-status', {})).body).toEqual({
      models: {},
      hf_auth: { token_available: false, eligible: true },
    });
    const bad = await post('/api/models-availability-status', '{"models": {');
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe('INVALID_JSON');
    expect(bad.body.error).toHaveProperty('message');
    expect(bad.body.error).toHaveProperty('details');
    for (const body of [
      '[]',
      '"x"',
      '{"models": []}',
      '{"models": {"checkpoints/a.safetensors": 5}}',
      '{"models": {"a/b.pt": {"url": "x", "sha256": "zz"}}}',
    ]) {
      const r = await post('/api/models-availability-status', body);
      expect([r.status, r.body.error.code]).toEqual([400, 'INVALID_BODY']);
    }
  });

  test('polling needs a signed-in user', async () => {
    const r = await post('/api/models-availability-status', { models: {} }, {});
    expect([r.status, r.body.error.code]).toEqual([401, 'AUTH_REQUIRED']);
  });

  test('20 concurrent polls of one gated URL make one gated probe; gated-ness is cached', async () => {
    const g = hf.addFile('org/flight', 'f.safetensors', rand(100), { gated: true });
    const before = hf.count('/api/models/org/flight/auth-check');
    const all = await Promise.all(Array.from({ length: 20 }, () => entry('checkpoints/f.safetensors', g.url)));
    expect(all.every((e) => e.is_hf_downloadable === false)).toBe(true);
    expect(hf.count('/api/models/org/flight/auth-check') - before).toBe(1);
    await entry('checkpoints/f.safetensors', g.url);
    expect(hf.count('/api/models/org/flight/auth-check') - before).toBe(1);
  });
});

describe('POST /api/download-models', () => {
  test('downloads through the CDN redirect, renames atomically, audits start and finish', async () => {
    const bytes = rand(300_000);
    const f = hf.addFile('org/dl', 'model.safetensors', bytes);
    const res = await post('/api/download-models', { models: { 'checkpoints/model.safetensors': f.url } });
    expect(res.status).toBe(202);
    expect(res.body).toEqual({ accepted: true, scheduled: ['checkpoints/model.safetensors'] });
    await waitFor(async () => (await entry('checkpoints/model.safetensors', f.url)).state === 'available');
    expect(fs.readFileSync(path.join(modelsDir, 'checkpoints', 'model.safetensors')).equals(bytes)).toBe(true);
    expect(tmpFiles()).toEqual([]);
    const cdnGets = hf.requests.filter((r) => r.server === 'cdn' && r.method === 'GET');
    expect(cdnGets.length).toBeGreaterThan(0);
    const logs = await flushedLogs(gw);
    const events = logs.filter(
      (l) => l.audit && String(l.event).startsWith('model_download') && l.model_id === 'checkpoints/model.safetensors',
    );
    expect(events.map((l) => [l.event, l.user])).toEqual([
      ['model_download_start', 'api-key'],
      ['model_download_finish', 'api-key'],
    ]);
    const again = await post('/api/download-models', { models: { 'checkpoints/model.safetensors': f.url } });
    expect([again.status, again.body.error.code]).toEqual([409, 'ALREADY_AVAILABLE']);
  });

  test('non-LFS files served directly, and {url, sha256} bodies are verified', async () => {
    const bytes = rand(5000);
    const f = hf.addFile('org/small', 'small.pt', bytes, { lfs: false });
    const sha = crypto.createHash('sha256').update(bytes).digest('hex');
    const ok = await post('/api/download-models', { models: { 'loras/small.pt': { url: f.url, sha256: sha.toUpperCase() } } });
    expect(ok.status).toBe(202);
    await waitFor(async () => (await entry('loras/small.pt', f.url)).state === 'available');
    expect(fs.readFileSync(path.join(modelsDir, 'loras', 'small.pt')).equals(bytes)).toBe(true);

    const g = hf.addFile('org/small', 'wrong.pt', rand(5000), { lfs: false });
    const bad = await post('/api/download-models', { models: { 'loras/wrong.pt': { url: g.url, sha256: 'a'.repeat(64) } } });
    expect(bad.status).toBe(202);
    const e = await waitFor(async () => {
      const x = await entry('loras/wrong.pt', g.url);
      return x.state === 'missing' && x.last_error ? x : null;
    });
    expect(e.last_error.code).toBe('HASH_MISMATCH');
    expect(fs.readdirSync(path.join(modelsDir, 'loras')).sort()).toEqual(['small.pt']);
  });

  test("HF's X-Linked-Etag is checked: a mismatch removes the file and reports HASH_MISMATCH", async () => {
    const f = hf.addFile('org/corrupt', 'c.safetensors', rand(70_000), { advertisedSha256: 'b'.repeat(64) });
    expect((await post('/api/download-models', { models: { 'vae/c.safetensors': f.url } })).status).toBe(202);
    const e = await waitFor(async () => {
      const x = await entry('vae/c.safetensors', f.url);
      return x.state === 'missing' && x.last_error ? x : null;
    });
    expect(e.last_error).toEqual({ code: 'HASH_MISMATCH', message: expect.any(String) });
    expect(fs.existsSync(path.join(modelsDir, 'vae', 'c.safetensors'))).toBe(false);
    expect(tmpFiles('vae')).toEqual([]);
    const logs = await flushedLogs(gw);
    expect(logs.some((l) => l.event === 'model_download_failed' && l.code === 'HASH_MISMATCH' && l.user === 'api-key')).toBe(true);
  });

  test('a connection cut mid-body resumes with Range and the hash still matches', async () => {
    const bytes = rand(400_000);
    const f = hf.addFile('org/flaky', 'flaky.safetensors', bytes, { failAfterBytes: 150_000, failTimes: 2 });
    expect((await post('/api/download-models', { models: { 'checkpoints/flaky.safetensors': f.url } })).status).toBe(202);
    await waitFor(async () => (await entry('checkpoints/flaky.safetensors', f.url)).state === 'available');
    expect(fs.readFileSync(path.join(modelsDir, 'checkpoints', 'flaky.safetensors')).equals(bytes)).toBe(true);
    const ranges = hf.requests.filter((r) => r.server === 'cdn' && r.url.includes(f.sha256) && r.headers.range).map((r) => r.headers.range);
    expect(ranges.length).toBe(2);
    expect(ranges.every((r) => /^bytes=\d+-$/.test(String(r)) && r !== 'bytes=0-')).toBe(true);
  });

  test('a body that stops short too many times fails without leaving anything', async () => {
    const f = hf.addFile('org/flaky', 'dead.safetensors', rand(100_000), { failAfterBytes: 1000, failTimes: 10 });
    expect((await post('/api/download-models', { models: { 'checkpoints/dead.safetensors': f.url } })).status).toBe(202);
    const e = await waitFor(async () => {
      const x = await entry('checkpoints/dead.safetensors', f.url);
      return x.last_error ? x : null;
    }, 15_000);
    expect(e.state).toBe('missing');
    expect(fs.existsSync(path.join(modelsDir, 'checkpoints', 'dead.safetensors'))).toBe(false);
    expect(tmpFiles()).toEqual([]);
  });

  test('progress while downloading, cancellation, then NOT_DOWNLOADING', async () => {
    const f = hf.addFile('org/slow', 'slow.safetensors', rand(200_000), { throttleBytesPerSec: 100_000 });
    expect((await post('/api/download-models', { models: { 'checkpoints/slow.safetensors': f.url } })).status).toBe(202);
    const e = await waitFor(async () => {
      const x = await entry('checkpoints/slow.safetensors', f.url);
      return x.state === 'downloading' && x.progress.bytes_downloaded > 0 ? x : null;
    });
    expect(e).toEqual({
      state: 'downloading',
      progress: { bytes_downloaded: expect.any(Number), total_bytes: 200_000, progress: expect.any(Number) },
      file_size: 200_000,
      is_hf_downloadable: true,
    });
    expect(e.progress.progress).toBeGreaterThan(0);
    expect(e.progress.progress).toBeLessThan(1);
    expect(tmpFiles().length).toBe(1);
    const dup = await post('/api/download-models', { models: { 'checkpoints/slow.safetensors': f.url } });
    expect([dup.status, dup.body.error.code, dup.body.error.details.model_id]).toEqual([
      409,
      'ALREADY_DOWNLOADING',
      'checkpoints/slow.safetensors',
    ]);
    const c = await post('/api/cancel-model-download-session', { model_id: 'checkpoints/slow.safetensors' });
    expect([c.status, c.body]).toEqual([200, { cancelled: true }]);
    expect((await entry('checkpoints/slow.safetensors', f.url)).state).toBe('missing');
    await waitFor(() => tmpFiles().length === 0);
    expect(fs.existsSync(path.join(modelsDir, 'checkpoints', 'slow.safetensors'))).toBe(false);
    const again = await post('/api/cancel-model-download-session', { model_id: 'checkpoints/slow.safetensors' });
    expect([again.status, again.body.error.code]).toEqual([404, 'NOT_DOWNLOADING']);
    const logs = await flushedLogs(gw);
    expect(
      logs.some((l) => l.event === 'model_download_cancel' && l.user === 'api-key' && l.model_id === 'checkpoints/slow.safetensors'),
    ).toBe(true);
  });

  test('cancel then restart at once: the old worker never touches the new session (epochs)', async () => {
    const bytes = rand(150_000);
    const f = hf.addFile('org/epoch', 'e.safetensors', bytes, { throttleBytesPerSec: 300_000 });
    const body = { models: { 'checkpoints/e.safetensors': f.url } };
    expect((await post('/api/download-models', body)).status).toBe(202);
    await waitFor(async () => (await entry('checkpoints/e.safetensors', f.url)).progress?.bytes_downloaded > 0);
    expect((await post('/api/cancel-model-download-session', { model_id: 'checkpoints/e.safetensors' })).status).toBe(200);
    expect((await post('/api/download-models', body)).status).toBe(202);
    await waitFor(async () => (await entry('checkpoints/e.safetensors', f.url)).state === 'available');
    expect(fs.readFileSync(path.join(modelsDir, 'checkpoints', 'e.safetensors')).equals(bytes)).toBe(true);
    expect(tmpFiles()).toEqual([]);
  });

  test('at most max_concurrent run at once; the rest are queued (reported downloading with no bytes)', async () => {
    const files = [1, 2, 3].map((i) => hf.addFile('org/q', `q${i}.safetensors`, rand(100_000), { throttleBytesPerSec: 50_000 }));
    const urls = files.map((f) => f.url);
    const models = Object.fromEntries(urls.map((u, i) => [`upscale_models/q${i + 1}.safetensors`, u]));
    const res = await post('/api/download-models', { models });
    expect(res.body.scheduled).toEqual(Object.keys(models));
    await waitFor(async () => {
      const s = (await status(models)).models;
      return (
        s['upscale_models/q1.safetensors'].progress?.bytes_downloaded > 0 &&
        s['upscale_models/q2.safetensors'].progress?.bytes_downloaded > 0
      );
    });
    const s = (await status(models)).models;
    expect(s['upscale_models/q3.safetensors']).toEqual({
      state: 'downloading',
      progress: { bytes_downloaded: 0, total_bytes: 100_000, progress: 0 },
      file_size: 100_000,
      is_hf_downloadable: true,
    });
    // the queued one has not even been requested from the CDN
    expect(hf.requests.filter((r) => r.server === 'cdn' && r.url.includes(files[2].sha256)).length).toBe(0);
    expect(hf.requests.filter((r) => r.server === 'cdn' && r.url.includes(files[0].sha256)).length).toBe(1);
    for (const id of Object.keys(models)) expect((await post('/api/cancel-model-download-session', { model_id: id })).status).toBe(200);
    await waitFor(() => tmpFiles('upscale_models').length === 0);
  });

  test('all-or-nothing: one bad model refuses the request and nothing is scheduled or fetched', async () => {
    const ok = hf.addFile('org/aon', 'ok.safetensors', rand(1000));
    const gated = hf.addFile('org/aon-gated', 'g.safetensors', rand(1000), { gated: true });
    const cases: [Record<string, unknown>, number, string][] = [
      [{ 'checkpoints/aon.safetensors': ok.url, 'nope/x.safetensors': ok.url }, 400, 'INVALID_MODEL_ID'],
      [
        { 'checkpoints/aon.safetensors': ok.url, 'checkpoints/x.safetensors': 'https://evil.example/x.safetensors' },
        400,
        'URL_NOT_ALLOWED',
      ],
      [{ 'checkpoints/aon.safetensors': ok.url, 'checkpoints/have.safetensors': ok.url }, 409, 'ALREADY_AVAILABLE'],
      [{ 'checkpoints/aon.safetensors': ok.url, 'checkpoints/g.safetensors': gated.url }, 400, 'MODEL_NOT_DOWNLOADABLE'],
    ];
    for (const [models, code, err] of cases) {
      const cdnBefore = hf.requests.filter((r) => r.server === 'cdn').length;
      const r = await post('/api/download-models', { models });
      expect([r.status, r.body.error.code]).toEqual([code, err]);
      expect(r.body.error).toEqual({ code: err, message: expect.any(String), details: expect.any(Object) });
      await new Promise((res) => setTimeout(res, 100));
      expect((await entry('checkpoints/aon.safetensors', ok.url)).state).toBe('missing');
      expect(hf.requests.filter((r2) => r2.server === 'cdn').length).toBe(cdnBefore);
    }
    expect(fs.existsSync(path.join(modelsDir, 'checkpoints', 'aon.safetensors'))).toBe(false);
  });

  test('model ids: exactly one slash, safe segments, model extension, a known model folder', async () => {
    const ok = hf.addFile('org/ids', 'i.safetensors', rand(10)).url;
    const bad = [
      'i.safetensors',
      'checkpoints/sub/i.safetensors',
      '/i.safetensors',
      'checkpoints/',
      '../i.safetensors',
      'checkpoints/..',
      'checkpoints/.',
      './i.safetensors',
      'checkpoints/i.txt',
      'checkpoints/i.safetensors.tmp',
      'custom_nodes/i.safetensors',
      'configs/i.pt',
      'unknown/i.safetensors',
      'check points/i.safetensors',
      'checkpoints/i%2e.pt',
      'checkpoints\\i.pt',
      '',
    ];
    for (const id of bad) {
      const r = await post('/api/download-models', { models: { [id]: ok } });
      expect([id, r.status, r.body.error.code]).toEqual([id, 400, 'INVALID_MODEL_ID']);
    }
    for (const ext of ['.safetensors', '.sft', '.ckpt', '.pth', '.pt']) {
      const e = await entry(`loras/ok${ext}`, ok);
      expect(e.state).toBe('missing');
    }
    expect(fs.readdirSync(path.join(modelsDir, 'custom_nodes'))).toEqual([]);
  });

  test('empty requests, bad bodies, and a disk that cannot hold the file', async () => {
    expect((await post('/api/download-models', { models: {} })).body.error.code).toBe('EMPTY_REQUEST');
    expect((await post('/api/download-models', {})).body.error.code).toBe('EMPTY_REQUEST');
    expect((await post('/api/download-models', 'not json')).body.error.code).toBe('INVALID_JSON');
    expect((await post('/api/download-models', { models: 'x' })).body.error.code).toBe('INVALID_BODY');
    const huge = hf.addFile('org/huge', 'huge.safetensors', rand(100), { advertisedSize: 4e15 });
    const r = await post('/api/download-models', { models: { 'checkpoints/huge.safetensors': huge.url } });
    expect([r.status, r.body.error.code, r.body.error.details.model_id]).toEqual([
      507,
      'INSUFFICIENT_STORAGE',
      'checkpoints/huge.safetensors',
    ]);
    expect((await entry('checkpoints/huge.safetensors', huge.url)).state).toBe('missing');
    expect(hf.requests.filter((x) => x.server === 'cdn' && x.url.includes(huge.sha256)).length).toBe(0);
  });

  test('cancel: INVALID_MODEL_ID, INVALID_BODY, NOT_DOWNLOADING', async () => {
    const c = (b: unknown) => post('/api/cancel-model-download-session', b);
    expect((await c({ model_id: 'nope' })).body.error.code).toBe('INVALID_MODEL_ID');
    expect((await c({ model_id: 'custom_nodes/x.safetensors' })).body.error.code).toBe('INVALID_MODEL_ID');
    expect((await c({})).body.error.code).toBe('INVALID_BODY');
    expect((await c({ model_id: 5 })).body.error.code).toBe('INVALID_BODY');
    expect((await c('{')).body.error.code).toBe('INVALID_JSON');
    const r = await c({ model_id: 'checkpoints/never.safetensors' });
    expect([r.status, r.body.error.code]).toEqual([404, 'NOT_DOWNLOADING']);
  });

  test('the same routes answer at /x and /api/x; other methods are refused', async () => {
    const a = await callApi(gw.url, 'GET', '/hf-auth-token-status', undefined, KEY);
    const b = await callApi(gw.url, 'GET', '/api/hf-auth-token-status', undefined, KEY);
    expect(a.body).toEqual({ token_available: false, username: null });
    expect(b.body).toEqual(a.body);
    const m = await callApi(gw.url, 'GET', '/api/download-models', undefined, KEY);
    expect(m.status).toBe(405);
  });
});

describe('orphaned partial downloads', () => {
  test('are swept at start; unrelated .tmp files are kept', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-orphans-'));
    fs.mkdirSync(path.join(dir, 'checkpoints'));
    fs.mkdirSync(path.join(dir, 'loras'));
    fs.writeFileSync(path.join(dir, 'checkpoints', 'a.safetensors.1700000000000.tmp'), 'partial');
    fs.writeFileSync(path.join(dir, 'loras', 'b.pt.17.tmp'), 'partial');
    fs.writeFileSync(path.join(dir, 'checkpoints', 'notes.tmp'), 'keep');
    fs.writeFileSync(path.join(dir, 'checkpoints', 'c.safetensors'), 'keep');
    const g = await startGateway({ api_key: TEST_KEY, upstream: 'http://127.0.0.1:9', comfyui: { models_dir: dir } });
    try {
      expect(fs.readdirSync(path.join(dir, 'checkpoints')).sort()).toEqual(['c.safetensors', 'notes.tmp']);
      expect(fs.readdirSync(path.join(dir, 'loras'))).toEqual([]);
    } finally {
      await g.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

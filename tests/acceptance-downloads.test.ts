/**
 * Acceptance of issue 6 from outside, against the built product: the exact response shapes of every route, the
 * feature flags per caller, per-user HuggingFace tokens with two users of whom only one is logged in, SSRF attempts
 * (other ports, look-alike hosts, userinfo, a redirect chain ending on the cloud metadata address) refused with no
 * connection made, hash mismatches, cancel/re-download cycles, INVALID_JSON vs INVALID_BODY, all-or-nothing batches
 * (also when two requests race), and `kill -9` of the compiled gateway mid-download.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { spawnGateway } from './helpers/child';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { callApi, startFakeHf, userWith as userWithVia, waitFor, type FakeHf, type JsonReply } from './helpers/fakeHf';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { openSocket } from './helpers/ws';

const KEY = { 'x-api-key': TEST_KEY };
const PW = 'correct-horse-battery-7';
const rand = (n: number) => crypto.randomBytes(n);
const ID_RE = /^[A-Z][A-Z0-9_]+$/;

/** A server that counts connections (it would serve a "model" to anyone) or answers with redirects by path. */
function server(handler: (req: http.IncomingMessage, res: http.ServerResponse) => void) {
  let connections = 0;
  const seen: { url: string; authorization?: string }[] = [];
  const s = http.createServer((req, res) => {
    seen.push({ url: req.url ?? '', authorization: req.headers.authorization });
    handler(req, res);
  });
  s.on('connection', () => connections++);
  return new Promise<{ port: number; connections: () => number; seen: typeof seen; close(): Promise<void> }>((resolve) =>
    s.listen(0, '127.0.0.1', () =>
      resolve({
        port: (s.address() as AddressInfo).port,
        connections: () => connections,
        seen,
        close: () => new Promise<void>((r) => (s.closeAllConnections(), s.close(() => r()))),
      }),
    ),
  );
}

let hf: FakeHf;
let comfy: FakeComfy;
let gw: TestGateway;
let trap: Awaited<ReturnType<typeof server>>;
let hop: Awaited<ReturnType<typeof server>>;
let alice: Record<string, string>;
let bob: Record<string, string>;
let carol: Record<string, string>;
const bodies: string[] = [];

async function call(method: string, p: string, body: unknown, who: Record<string, string>): Promise<JsonReply> {
  const r = await callApi(gw.url, method, p, body, who);
  bodies.push(r.text);
  return r;
}
const poll = (who: Record<string, string>, models: Record<string, unknown>) =>
  call('POST', '/api/models-availability-status', { models }, who);
const start = (who: Record<string, string>, models: Record<string, unknown>) => call('POST', '/api/download-models', { models }, who);
const cancel = (who: Record<string, string>, id: string) => call('POST', '/api/cancel-model-download-session', { model_id: id }, who);
const entry = async (who: Record<string, string>, id: string, url: unknown) => (await poll(who, { [id]: url })).body.models[id];
const dir = (folder: string) => path.join(comfy.modelsDir, folder);
const names = (folder: string) => (fs.existsSync(dir(folder)) ? fs.readdirSync(dir(folder)) : []);
const tmpsOf = (folder: string, file: string) => names(folder).filter((n) => n.startsWith(`${file}.`) && n.endsWith('.tmp'));

const userWith = (username: string, permissions: string[]) => userWithVia(gw.url, KEY, username, permissions, PW);

beforeAll(async () => {
  hf = await startFakeHf();
  comfy = await startFakeComfy();
  trap = await server((_req, res) => res.end(Buffer.alloc(64)));
  hop = await server((req, res) => {
    const to: Record<string, string> = {
      '/metadata': 'http://169.254.169.254/latest/meta-data/iam.safetensors',
      '/metadata-v6': 'http://[::ffff:a9fe:a9fe]/latest/x.safetensors',
      '/metadata-decimal': 'http://2852039166/latest/x.safetensors',
      '/metadata-https': 'https://169.254.169.254/latest/x.safetensors',
      '/trap': `http://127.0.0.1:${trap.port}/x.safetensors`,
      '/trap-localhost': `http://localhost:${trap.port}/x.safetensors`,
      '/trap-userinfo': `http://${hf.host}@127.0.0.1:${trap.port}/x.safetensors`,
      '/hf-userinfo': `http://user:pw@${hf.host}/org/x/resolve/main/x.safetensors`,
      '/file': 'file:///etc/passwd',
      '/again': `http://127.0.0.1:${hop.port}/metadata`,
    };
    const loc = to[new URL(req.url ?? '/', 'http://x').pathname];
    if (!loc) return void res.writeHead(404).end();
    res.writeHead(302, { location: loc }).end();
  });
  gw = await startGateway(
    {
      api_key: TEST_KEY,
      upstream: comfy.url,
      trusted_proxies: ['127.0.0.1'],
      model_downloads: {
        allowed_hosts: [hf.host, 'huggingface.co'],
        redirect_hosts: [hf.cdnHost, `127.0.0.1:${hop.port}`],
        max_concurrent: 2,
      },
      hf_oauth: { client_id: hf.clientId, callback_port: 0 },
    },
    { env: { HF_ENDPOINT: hf.url } },
  );
  alice = await userWith('alice', ['download_models']);
  bob = await userWith('bob', ['download_models']);
  carol = await userWith('carol', []);
});

afterAll(async () => {
  await gw?.close();
  await hf?.close();
  await comfy?.close();
  await trap?.close();
  await hop?.close();
});

afterAll(() => {
  // No response to any client ever carried a HuggingFace token.
  const text = bodies.join('\n');
  expect(text).not.toMatch(/hf_at_|hf_rt_/);
});

describe('the contract, exactly', () => {
  test('every route’s answer has exactly the upstream keys and types; null where unknown, never missing', async () => {
    const f = hf.addFile('org/shape', 'shape.safetensors', rand(4321));
    const id = 'checkpoints/shape.safetensors';
    const p = await poll(alice, { [id]: f.url, 'checkpoints/../x.pt': f.url });
    expect(p.status).toBe(200);
    expect(p.headers.get('content-type')).toMatch(/^application\/json/);
    expect(Object.keys(p.body).sort()).toEqual(['hf_auth', 'models']);
    expect(Object.keys(p.body.hf_auth).sort()).toEqual(['eligible', 'token_available']);
    for (const e of Object.values(p.body.models) as any[]) {
      expect(Object.keys(e).sort()).toEqual(['file_size', 'is_hf_downloadable', 'progress', 'state']);
    }
    expect(p.body.models[id]).toEqual({ state: 'missing', progress: null, file_size: 4321, is_hf_downloadable: true });
    // not an allow-listed URL: nothing known, and every key still present as null
    expect(await entry(alice, id, 'https://example.invalid/x.safetensors')).toEqual({
      state: 'missing',
      progress: null,
      file_size: null,
      is_hf_downloadable: null,
    });

    const d = await start(alice, { [id]: f.url });
    expect([d.status, d.body]).toEqual([202, { accepted: true, scheduled: [id] }]);
    await waitFor(async () => (await entry(alice, id, f.url)).state === 'available');
    expect(await entry(bob, id, f.url)).toEqual({ state: 'available', progress: null, file_size: 4321, is_hf_downloadable: true });

    const ts = await call('GET', '/api/hf-auth-token-status', undefined, bob);
    expect([ts.status, ts.body]).toEqual([200, { token_available: false, username: null }]);
    const lo = await call('POST', '/api/hf-auth-logout', {}, bob);
    expect([lo.status, lo.body]).toEqual([200, { logged_out: true }]);
    expect((await call('POST', '/api/hf-auth-logout', undefined, bob)).body).toEqual({ logged_out: true });

    // every refusal: the envelope with exactly code, message, details (an object)
    const refusals: [JsonReply, number, string][] = [
      [await start(alice, {}), 400, 'EMPTY_REQUEST'],
      [await start(alice, { 'nope/x.safetensors': f.url }), 400, 'INVALID_MODEL_ID'],
      [await start(alice, { 'loras/x.safetensors': 'https://evil.test/x.safetensors' }), 400, 'URL_NOT_ALLOWED'],
      [await start(alice, { [id]: f.url }), 409, 'ALREADY_AVAILABLE'],
      [await start(carol, { 'loras/x.safetensors': f.url }), 403, 'FORBIDDEN'],
      [await cancel(alice, 'loras/never.safetensors'), 404, 'NOT_DOWNLOADING'],
      [await cancel(alice, 'loras'), 400, 'INVALID_MODEL_ID'],
      [await call('POST', '/api/hf-auth-login-start', {}, carol), 403, 'HF_AUTH_NOT_ELIGIBLE'],
      [await call('POST', '/api/models-availability-status', { models: {} }, {}), 401, 'AUTH_REQUIRED'],
    ];
    for (const [r, status, code] of refusals) {
      expect([code, r.status]).toEqual([code, status]);
      expect(r.headers.get('content-type')).toMatch(/^application\/json/);
      expect(Object.keys(r.body)).toEqual(['error']);
      expect(Object.keys(r.body.error).sort()).toEqual(['code', 'details', 'message']);
      expect(r.body.error.code).toBe(code);
      expect(r.body.error.code).toMatch(ID_RE);
      expect(typeof r.body.error.message).toBe('string');
      expect(r.body.error.details !== null && typeof r.body.error.details === 'object' && !Array.isArray(r.body.error.details)).toBe(true);
    }
  });

  test('INVALID_JSON for what is not JSON, INVALID_BODY for JSON of the wrong shape, on all three POST routes', async () => {
    const routes = ['/api/models-availability-status', '/api/download-models', '/api/cancel-model-download-session'];
    const notJson = ['', ' ', '{', '{"models": {}', "{'models': {}}", 'models=1', '\u0000', '{"models": {}}garbage', 'NaN', '[1,]'];
    for (const route of routes) {
      for (const body of notJson) {
        const r = await call('POST', route, body, alice);
        expect([route, body, r.status, r.body?.error?.code]).toEqual([route, body, 400, 'INVALID_JSON']);
      }
    }
    const wrongShape: [string, string][] = [
      ['/api/models-availability-status', 'null'],
      ['/api/models-availability-status', '[]'],
      ['/api/models-availability-status', '"models"'],
      ['/api/models-availability-status', '{"models": null}'],
      ['/api/models-availability-status', '{"models": [["checkpoints/a.safetensors", "u"]]}'],
      ['/api/models-availability-status', '{"models": {"checkpoints/a.safetensors": null}}'],
      ['/api/models-availability-status', '{"models": {"checkpoints/a.safetensors": {"sha256": "' + 'a'.repeat(64) + '"}}}'],
      ['/api/download-models', '{"models": {"checkpoints/a.safetensors": {"url": 5}}}'],
      [
        '/api/download-models',
        '{"models": {"checkpoints/a.safetensors": {"url": "https://huggingface.co/a/b/resolve/main/a.safetensors", "sha256": "abc"}}}',
      ],
      [
        '/api/download-models',
        '{"models": {"checkpoints/a.safetensors": {"url": "https://huggingface.co/a/b/resolve/main/a.safetensors", "sha256": 7}}}',
      ],
      ['/api/download-models', '{"models": "checkpoints/a.safetensors"}'],
      ['/api/download-models', '12'],
      ['/api/cancel-model-download-session', '{}'],
      ['/api/cancel-model-download-session', '{"model_id": null}'],
      ['/api/cancel-model-download-session', '{"model_id": ["checkpoints/a.safetensors"]}'],
      ['/api/cancel-model-download-session', '"checkpoints/a.safetensors"'],
      ['/api/cancel-model-download-session', 'null'],
    ];
    for (const [route, body] of wrongShape) {
      const r = await call('POST', route, body, alice);
      expect([route, body, r.status, r.body?.error?.code]).toEqual([route, body, 400, 'INVALID_BODY']);
    }
    // a gzip-encoded JSON body is still JSON; a body over the limit is refused in the same envelope
    const gz = zlib.gzipSync(JSON.stringify({ models: {} }));
    const res = await fetch(`${gw.url}/api/models-availability-status`, {
      method: 'POST',
      headers: { ...alice, 'content-type': 'application/json', 'content-encoding': 'gzip' },
      body: gz,
    });
    expect(res.status).toBe(200);
    const big = await call(
      'POST',
      '/api/models-availability-status',
      JSON.stringify({ models: {}, pad: 'x'.repeat(2 * 1024 * 1024) }),
      alice,
    );
    expect(big.status).toBe(413);
    expect(Object.keys(big.body.error).sort()).toEqual(['code', 'details', 'message']);
    expect(big.body.error.code).toMatch(ID_RE);
    const enc = await fetch(`${gw.url}/api/download-models`, {
      method: 'POST',
      headers: { ...alice, 'content-type': 'application/json', 'content-encoding': 'x-unknown' },
      body: '{}',
    });
    expect(enc.status).toBeGreaterThanOrEqual(400);
    expect(enc.status).toBeLessThan(500);
    const encBody = (await enc.json()) as { error: Record<string, unknown> };
    expect(Object.keys(encBody.error).sort()).toEqual(['code', 'details', 'message']);
    // the caller without the permission learns nothing from a malformed body: 403 first
    expect((await call('POST', '/api/download-models', '{', carol)).body.error.code).toBe('FORBIDDEN');
  });

  test('/api/features and the WebSocket feature_flags reply, per caller and per place', async () => {
    const flags = async (who: Record<string, string>, extra: Record<string, string> = {}) =>
      (await call('GET', '/api/features', undefined, { ...who, ...extra })).body;
    expect(await flags(alice)).toMatchObject({
      supports_preview_metadata: true,
      server_side_model_downloads: true,
      hf_auth_eligible: true,
    });
    expect(await flags(carol)).toMatchObject({ server_side_model_downloads: true, hf_auth_eligible: false });
    // through a (trusted) proxy the browser is elsewhere: the loopback callback is out of its reach
    expect(await flags(alice, { 'x-forwarded-for': '203.0.113.7' })).toMatchObject({
      server_side_model_downloads: true,
      hf_auth_eligible: false,
    });
    expect((await call('GET', '/features', undefined, alice)).body.hf_auth_eligible).toBe(true);
    const base = gw.url.replace(/^http/, 'ws');
    const sockets = [
      ['alice', await openSocket(`${base}/ws?clientId=ff-a`, alice), true],
      ['carol', await openSocket(`${base}/api/ws?clientId=ff-c`, carol), false],
      ['alice-proxied', await openSocket(`${base}/ws?clientId=ff-p`, { ...alice, 'x-forwarded-for': '203.0.113.7' }), false],
    ] as const;
    try {
      for (const [, s] of sockets) s.ws.send(JSON.stringify({ type: 'feature_flags', data: { supports_preview_metadata: true } }));
      for (const [who, s, eligible] of sockets) {
        const m = await s.next((f) => f.json?.type === 'feature_flags');
        expect([who, m.json.data.server_side_model_downloads, m.json.data.hf_auth_eligible]).toEqual([who, true, eligible]);
      }
    } finally {
      for (const [, s] of sockets) s.close();
    }
  });
});

describe('two users, only alice logged in to HuggingFace', () => {
  let gated: { url: string; sha256: string; size: number };
  const gid = 'loras/gated-acc.safetensors';

  beforeAll(async () => {
    gated = hf.addFile('meta/acc-gated', 'gated-acc.safetensors', rand(90_000), { gated: true });
    hf.oauthUser = 'hf-alice';
    const s = await call('POST', '/api/hf-auth-login-start', {}, alice);
    expect(s.status).toBe(200);
    const cb = await hf.authorize(s.body.authorize_url);
    const page = await fetch(cb);
    bodies.push(await page.text());
    expect(page.status).toBe(200);
  });

  test('token status, gated downloadability and size are alice’s alone; bob’s requests carry no token', async () => {
    expect((await call('GET', '/api/hf-auth-token-status', undefined, alice)).body).toEqual({
      token_available: true,
      username: 'hf-alice',
    });
    expect((await call('GET', '/api/hf-auth-token-status', undefined, bob)).body).toEqual({ token_available: false, username: null });
    const a = await poll(alice, { [gid]: gated.url });
    expect(a.body.models[gid]).toEqual({ state: 'missing', progress: null, file_size: 90_000, is_hf_downloadable: true });
    expect(a.body.hf_auth).toEqual({ token_available: true, eligible: true });
    hf.clearRequests();
    // The size alice's probe learned is not handed to bob, who cannot fetch the file.
    const b = await poll(bob, { [gid]: gated.url });
    expect(b.body.models[gid]).toEqual({ state: 'missing', progress: null, file_size: null, is_hf_downloadable: false });
    expect(b.body.hf_auth).toEqual({ token_available: false, eligible: true });
    const refused = await start(bob, { [gid]: gated.url });
    expect([refused.status, refused.body.error.code]).toEqual([400, 'MODEL_NOT_DOWNLOADABLE']);
    // bob's logout does not touch alice's token
    expect((await call('POST', '/api/hf-auth-logout', {}, bob)).body).toEqual({ logged_out: true });
    expect(hf.requests.some((r) => r.headers.authorization)).toBe(false);
    expect((await call('GET', '/api/hf-auth-token-status', undefined, alice)).body.token_available).toBe(true);

    // alice's download uses her token on the Hub only; bob may watch it but neither cancel nor duplicate it.
    const slow = hf.addFile('meta/acc-gated', 'slow-gated.safetensors', rand(400_000), { gated: true, throttleBytesPerSec: 400_000 });
    const sid = 'loras/slow-gated.safetensors';
    expect((await start(alice, { [sid]: slow.url })).status).toBe(202);
    const seen = await waitFor(async () => {
      const e = await entry(bob, sid, slow.url);
      return e.state === 'downloading' && e.progress.bytes_downloaded > 0 ? e : null;
    });
    expect(seen.is_hf_downloadable).toBe(false);
    expect((await start(bob, { [sid]: slow.url })).body.error.code).toBe('ALREADY_DOWNLOADING');
    expect((await cancel(bob, sid)).status).toBe(403);
    await waitFor(async () => (await entry(alice, sid, slow.url)).state === 'available', 10_000);
    const tok = JSON.parse(
      fs.readFileSync(path.join(gw.config.paths.dataDir, 'hf_tokens', `${gw.composed.users.get('alice')!.id}.json`), 'utf8'),
    ).access_token;
    const hub = hf.requests.filter((r) => r.server === 'hf' && r.url.includes('slow-gated') && r.method === 'GET');
    expect(hub.length).toBeGreaterThan(0);
    expect(hub.every((r) => r.headers.authorization === `Bearer ${tok}`)).toBe(true);
    expect(hf.requests.filter((r) => r.server === 'cdn').every((r) => !r.headers.authorization)).toBe(true);
    expect(fs.statSync(path.join(dir('loras'), 'slow-gated.safetensors')).size).toBe(400_000);
  });
});

describe('SSRF', () => {
  test('URLs naming other ports, look-alike hosts, userinfo or loopback spellings: refused, no connection anywhere', async () => {
    const hfHostOnly = hf.host.split(':')[0];
    const urls = [
      'https://huggingface.co:8443/org/r/resolve/main/x.safetensors',
      'https://huggingface.co.evil.test/org/r/resolve/main/x.safetensors',
      'https://evil-huggingface.co/org/r/resolve/main/x.safetensors',
      'https://user:pass@huggingface.co/org/r/resolve/main/x.safetensors',
      'https://huggingface.co@evil.test/org/r/resolve/main/x.safetensors',
      'https://huggingface.co%2F@evil.test/x.safetensors',
      'http://huggingface.co/org/r/resolve/main/x.safetensors',
      'https://huggingface.co./org/r/resolve/main/x.safetensors',
      'ftp://huggingface.co/org/r/resolve/main/x.safetensors',
      'https://huggingface.co\\@evil.test/x.safetensors',
      ' https://huggingface.co/org/r/resolve/main/x.safetensors',
      `http://127.0.0.1:${trap.port}/x.safetensors`,
      `http://localhost:${trap.port}/x.safetensors`,
      `http://[::1]:${trap.port}/x.safetensors`,
      `http://2130706433:${trap.port}/x.safetensors`,
      `http://0x7f.1:${trap.port}/x.safetensors`,
      `http://${hf.host}@127.0.0.1:${trap.port}/x.safetensors`,
      `http://user@${hf.host}/org/r/resolve/main/x.safetensors`,
      `http://[::ffff:${hfHostOnly}]:${hf.host.split(':')[1]}/org/r/resolve/main/x.safetensors`,
      `http://127.0.0.1:${trap.port}/x.safetensors?@${hf.host}`,
    ];
    hf.clearRequests();
    for (const [i, url] of urls.entries()) {
      const id = `checkpoints/ssrf${i}.safetensors`;
      expect([url, await entry(alice, id, url)]).toEqual([
        url,
        { state: 'missing', progress: null, file_size: null, is_hf_downloadable: null },
      ]);
      const r = await start(alice, { [id]: url });
      expect([url, r.status, r.body.error.code]).toEqual([url, 400, 'URL_NOT_ALLOWED']);
    }
    expect(trap.connections()).toBe(0);
    expect(hf.requests).toEqual([]);
    expect(names('checkpoints').filter((n) => n.startsWith('ssrf'))).toEqual([]);
  });

  test('a redirect chain ending on the metadata address, a trap port, userinfo or file: fails URL_NOT_ALLOWED mid-download', async () => {
    const targets = [
      '/metadata',
      '/metadata-v6',
      '/metadata-decimal',
      '/metadata-https',
      '/trap',
      '/trap-localhost',
      '/trap-userinfo',
      '/hf-userinfo',
      '/file',
      '/again',
    ];
    for (const [i, t] of targets.entries()) {
      const f = hf.addFile('org/redir', `r${i}.safetensors`, rand(1000), { redirectTo: `http://127.0.0.1:${hop.port}${t}` });
      const id = `vae/r${i}.safetensors`;
      const d = await start(alice, { [id]: f.url });
      expect([t, d.status]).toEqual([t, 202]);
      const e = await waitFor(async () => {
        const x = await entry(alice, id, f.url);
        return x.last_error ? x : null;
      });
      expect([t, e.state, e.last_error.code]).toEqual([t, 'missing', 'URL_NOT_ALLOWED']);
      expect(names('vae').filter((n) => n.startsWith(`r${i}.`))).toEqual([]);
    }
    expect(trap.connections()).toBe(0);
    // the hop was reached (the chain really was followed to it) and never saw a token
    expect(hop.seen.length).toBeGreaterThanOrEqual(targets.length);
    expect(hop.seen.every((s) => s.authorization === undefined)).toBe(true);
  });
});

describe('downloads', () => {
  test('{url, sha256} with a wrong hash: HASH_MISMATCH on the status entry, nothing left; the right hash then succeeds', async () => {
    const bytes = rand(50_000);
    const f = hf.addFile('org/hash', 'h.safetensors', bytes);
    const id = 'checkpoints/h.safetensors';
    expect((await start(alice, { [id]: { url: f.url, sha256: 'c'.repeat(64) } })).status).toBe(202);
    const e = await waitFor(async () => {
      const x = await entry(bob, id, f.url);
      return x.last_error ? x : null;
    });
    expect(e).toEqual({
      state: 'missing',
      progress: null,
      file_size: 50_000,
      is_hf_downloadable: true,
      last_error: { code: 'HASH_MISMATCH', message: expect.any(String) },
    });
    expect(names('checkpoints').filter((n) => n.startsWith('h.safetensors'))).toEqual([]);
    expect((await start(alice, { [id]: { url: f.url, sha256: f.sha256, extra: 'ignored' } })).status).toBe(202);
    await waitFor(async () => (await entry(alice, id, f.url)).state === 'available');
    const after = await entry(alice, id, f.url);
    expect(after).toEqual({ state: 'available', progress: null, file_size: 50_000, is_hf_downloadable: true });
    expect(fs.readFileSync(path.join(dir('checkpoints'), 'h.safetensors')).equals(bytes)).toBe(true);
  });

  test('cancel and re-download several times in a row: one live temp file at most, the last session wins intact', async () => {
    const bytes = rand(300_000);
    const f = hf.addFile('org/cycle', 'cycle.safetensors', bytes, { throttleBytesPerSec: 600_000 });
    const id = 'upscale_models/cycle.safetensors';
    for (let i = 0; i < 3; i++) {
      expect((await start(alice, { [id]: f.url })).status).toBe(202);
      await waitFor(async () => (await entry(alice, id, f.url)).progress?.bytes_downloaded > 0);
      expect((await cancel(alice, id)).body).toEqual({ cancelled: true });
      expect((await entry(alice, id, f.url)).state).toBe('missing');
      expect(tmpsOf('upscale_models', 'cycle.safetensors').length).toBeLessThanOrEqual(1);
    }
    expect((await start(alice, { [id]: f.url })).status).toBe(202);
    await waitFor(async () => (await entry(alice, id, f.url)).state === 'available', 10_000);
    expect(fs.readFileSync(path.join(dir('upscale_models'), 'cycle.safetensors')).equals(bytes)).toBe(true);
    await waitFor(() => tmpsOf('upscale_models', 'cycle.safetensors').length === 0);
    expect((await cancel(alice, id)).body.error.code).toBe('NOT_DOWNLOADING');
  });

  test('a queued download cancelled before it runs is never fetched', async () => {
    const files = [1, 2, 3].map((i) => hf.addFile('org/queued', `qq${i}.safetensors`, rand(200_000), { throttleBytesPerSec: 200_000 }));
    const models = Object.fromEntries(files.map((f, i) => [`embeddings/qq${i + 1}.safetensors`, f.url]));
    expect((await start(alice, models)).status).toBe(202);
    expect((await cancel(alice, 'embeddings/qq3.safetensors')).body).toEqual({ cancelled: true });
    for (const id of ['embeddings/qq1.safetensors', 'embeddings/qq2.safetensors']) await cancel(alice, id);
    await new Promise((r) => setTimeout(r, 300));
    expect(hf.requests.filter((r) => r.server === 'cdn' && r.url.includes(files[2].sha256)).length).toBe(0);
    await waitFor(() => names('embeddings').filter((n) => n.startsWith('qq')).length === 0);
  });

  test('409s in mixed batches schedule nothing; two racing overlapping batches: exactly one wins, whole', async () => {
    const have = hf.addFile('org/mix', 'have-mix.safetensors', rand(100));
    fs.mkdirSync(dir('controlnet'), { recursive: true });
    fs.writeFileSync(path.join(dir('controlnet'), 'have-mix.safetensors'), 'x');
    const slow = hf.addFile('org/mix', 'busy.safetensors', rand(200_000), { throttleBytesPerSec: 100_000 });
    expect((await start(alice, { 'controlnet/busy.safetensors': slow.url })).status).toBe(202);
    const fresh = [1, 2, 3].map((i) => hf.addFile('org/mix', `fresh${i}.safetensors`, rand(1000)));
    const cdnFor = (f: { sha256: string }) => hf.requests.filter((r) => r.server === 'cdn' && r.url.includes(f.sha256)).length;

    const a = await start(bob, { 'controlnet/fresh1.safetensors': fresh[0].url, 'controlnet/have-mix.safetensors': have.url });
    expect([a.status, a.body.error.code, a.body.error.details.model_id]).toEqual([
      409,
      'ALREADY_AVAILABLE',
      'controlnet/have-mix.safetensors',
    ]);
    const b = await start(bob, { 'controlnet/fresh1.safetensors': fresh[0].url, 'controlnet/busy.safetensors': slow.url });
    expect([b.status, b.body.error.code, b.body.error.details.model_id]).toEqual([
      409,
      'ALREADY_DOWNLOADING',
      'controlnet/busy.safetensors',
    ]);
    const c = await start(bob, {
      'controlnet/busy.safetensors': slow.url,
      'controlnet/have-mix.safetensors': have.url,
      'controlnet/fresh1.safetensors': fresh[0].url,
    });
    expect(c.status).toBe(409);
    await new Promise((r) => setTimeout(r, 150));
    expect((await entry(bob, 'controlnet/fresh1.safetensors', fresh[0].url)).state).toBe('missing');
    expect(cdnFor(fresh[0])).toBe(0);
    expect((await cancel(alice, 'controlnet/busy.safetensors')).status).toBe(200);

    // Two requests naming an overlapping model, sent together: one is accepted whole, the other refused whole.
    const x = { 'controlnet/fresh1.safetensors': fresh[0].url, 'controlnet/fresh2.safetensors': fresh[1].url };
    const y = { 'controlnet/fresh2.safetensors': fresh[1].url, 'controlnet/fresh3.safetensors': fresh[2].url };
    const [rx, ry] = await Promise.all([start(alice, x), start(bob, y)]);
    expect([rx.status, ry.status].sort()).toEqual([202, 409]);
    const loser = rx.status === 409 ? rx : ry;
    expect(loser.body.error.code).toBe('ALREADY_DOWNLOADING');
    const lonely = rx.status === 409 ? 'controlnet/fresh1.safetensors' : 'controlnet/fresh3.safetensors';
    const winners = Object.keys(rx.status === 202 ? x : y);
    for (const id of winners) await waitFor(async () => (await entry(alice, id, 'x')).state === 'available');
    await new Promise((r) => setTimeout(r, 150));
    expect((await entry(alice, lonely, 'x')).state).toBe('missing');
    expect(fs.existsSync(path.join(dir('controlnet'), lonely.split('/')[1]))).toBe(false);
  });
});

describe('kill -9 of the compiled gateway mid-download', () => {
  test('no partial file under a final name; the next start sweeps the temps without asking ComfyUI', async () => {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-accept-kill-'));
    const ckpt = dir('checkpoints');
    const decoys = ['notes.tmp', 'keep.safetensors.tmp', 'done-before.safetensors', 'other.safetensors.12ab.tmp'];
    for (const d of decoys) fs.writeFileSync(path.join(ckpt, d), 'decoy');
    const files = [1, 2, 3].map((i) => ({ i, bytes: rand(2_000_000), name: `k${i}.safetensors` }));
    const hosted = files.map((f) => hf.addFile('org/kill', f.name, f.bytes, { throttleBytesPerSec: 1_000_000 }));
    const config = {
      host: '127.0.0.1',
      port: 0,
      data_dir: path.join(work, 'data'),
      api_key: TEST_KEY,
      upstream: comfy.url,
      log_levels: ['warn'],
      model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost], max_concurrent: 2 },
    };
    fs.writeFileSync(path.join(work, 'config.json'), JSON.stringify(config));
    const ours = () => names('checkpoints').filter((n) => /^k\d\.safetensors/.test(n));
    const child = await spawnGateway(['--config', path.join(work, 'config.json')], { HF_ENDPOINT: hf.url });
    let restarted: Awaited<ReturnType<typeof spawnGateway>> | null = null;
    try {
      const models = Object.fromEntries(files.map((f, k) => [`checkpoints/${f.name}`, hosted[k].url]));
      const r = await callApi(child.url, 'POST', '/api/download-models', { models }, KEY);
      expect(r.status).toBe(202);
      const tmps = await waitFor(() => {
        const t = ours().filter((n) => n.endsWith('.tmp'));
        return t.length === 2 && t.every((n) => fs.statSync(path.join(ckpt, n)).size > 100_000) ? t : null;
      });
      child.kill('SIGKILL');
      await child.exited;
      expect(child.proc.signalCode).toBe('SIGKILL');
      expect(ours().sort()).toEqual([...tmps].sort());
      for (const t of tmps) expect(t).toMatch(/^k[12]\.safetensors\.\d+\.tmp$/);

      // ComfyUI is down for the next start: the sweep works from the folders the last run learned.
      await comfy.stop();
      comfy.clearRequests();
      restarted = await spawnGateway(['--config', path.join(work, 'config.json')], { HF_ENDPOINT: hf.url });
      expect(ours()).toEqual([]);
      for (const d of decoys) expect(fs.readFileSync(path.join(ckpt, d), 'utf8')).toBe('decoy');
      await comfy.start();
      expect(comfy.requests).toEqual([]);
      const again = await callApi(
        restarted.url,
        'POST',
        '/api/download-models',
        { models: { 'checkpoints/k3.safetensors': hosted[2].url } },
        KEY,
      );
      expect(again.status).toBe(202);
      await waitFor(() => ours().length === 1 && ours()[0] === 'k3.safetensors', 15_000);
      expect(fs.readFileSync(path.join(ckpt, 'k3.safetensors')).equals(files[2].bytes)).toBe(true);
    } finally {
      if (child.proc.exitCode === null && child.proc.signalCode === null) child.kill('SIGKILL');
      if (restarted) {
        restarted.kill('SIGTERM');
        await restarted.exited;
      }
      for (const d of decoys) fs.rmSync(path.join(ckpt, d), { force: true });
      fs.rmSync(work, { recursive: true, force: true });
    }
  }, 40_000);
});

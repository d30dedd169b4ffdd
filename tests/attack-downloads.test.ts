/**
 * Security review of the model-download subsystem (issue 6), from an attacker's side: size lies that would fill the
 * disk, temp-file symlinks, racing users, sweeps through aliased directories, who may cancel whose download, one
 * user's HF login blocking everyone's, HF refresh storms, and what polling costs once caches are warm.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { createAudit } from '../gateway/audit';
import type { HfApi } from '../gateway/downloads/hfApi';
import { createHostPolicy } from '../gateway/downloads/hosts';
import { createDownloadManager } from '../gateway/downloads/manager';
import { BlockedError, createSafeHttp } from '../gateway/downloads/safeHttp';
import { createTokenStore } from '../gateway/downloads/tokens';
import { runDownload, tmpPathFor } from '../gateway/downloads/worker';
import { flushedLogs, startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { callApi, startFakeHf, userWith as userWithVia, waitFor, type FakeHf } from './helpers/fakeHf';

const KEY = { 'x-api-key': TEST_KEY };
const PW = 'correct-horse-battery-1';
const logger = pino({ level: 'silent' });
const rand = (n: number) => crypto.randomBytes(n);

const dirs: string[] = [];
const tmpDir = (prefix = 'cgw-attack-') => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  dirs.push(d);
  return d;
};

/** A throwaway HTTP server on 127.0.0.1 for the worker-level attacks. */
async function server(handler: http.RequestListener): Promise<{ port: number; url: string; close(): Promise<void> }> {
  const s = http.createServer(handler);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((r) => (s.closeAllConnections(), s.close(() => r()))),
  };
}

/** The outbound client as the gateway builds it, allowing exactly one local test server. */
const clientFor = (port: number) =>
  createSafeHttp({
    hosts: createHostPolicy({ allowedHosts: [`127.0.0.1:${port}`], redirectHosts: [], hfEndpoint: 'https://huggingface.co' }),
  });

function job(url: string, dest: string, over: Partial<Parameters<typeof runDownload>[1]> = {}): Parameters<typeof runDownload>[1] {
  return {
    url,
    dest,
    epoch: 7,
    sha256: null,
    hfToken: null,
    signal: new AbortController().signal,
    progress: () => undefined,
    freeSpace: async () => 1e12,
    isActive: () => true,
    ...over,
  };
}

/** Sends 64 KiB chunks with no length, never ending, until the client goes away; counts what it sent. */
function endlessServer() {
  let sent = 0;
  let open = 0;
  return server((req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' }); // chunked: no Content-Length
    if (req.method === 'HEAD') return res.end();
    open++;
    const chunk = Buffer.alloc(64 * 1024, 7);
    const t = setInterval(() => {
      if (res.destroyed) return;
      sent += chunk.length;
      res.write(chunk);
    }, 20);
    res.on('close', () => (clearInterval(t), open--));
  }).then((s) => ({ ...s, sent: () => sent, open: () => open }));
}

afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

// ─────────────────────────────── worker-level attacks ───────────────────────────────

describe('the download worker', () => {
  test('a resume whose Content-Range announces a different total fails SIZE_MISMATCH instead of growing the file', async () => {
    let gets = 0;
    const s = await server((req, res) => {
      gets++;
      if (!req.headers.range) {
        // announces 1000 bytes, sends 500, cuts the connection
        res.writeHead(200, { 'content-length': 1000 });
        res.write(Buffer.alloc(500, 1));
        setImmediate(() => res.socket?.destroy());
        return;
      }
      // the "resume" suddenly belongs to a 2 MB file
      const big = Buffer.alloc(2_000_000 - 500, 2);
      res.writeHead(206, { 'content-length': big.length, 'content-range': `bytes 500-1999999/2000000` });
      res.end(big);
    });
    const client = clientFor(s.port);
    const dest = path.join(tmpDir(), 'checkpoints', 'grow.safetensors');
    try {
      await expect(runDownload(client, job(`${s.url}/grow.safetensors`, dest))).rejects.toMatchObject({ code: 'SIZE_MISMATCH' });
      expect(gets).toBe(2);
      expect(fs.readdirSync(path.dirname(dest))).toEqual([]);
    } finally {
      client.close();
      await s.close();
    }
  });

  test('a body with no announced size is cut at the free disk space (INSUFFICIENT_STORAGE), nothing left', async () => {
    const s = await server((_req, res) => {
      res.writeHead(200, {}); // chunked, no length anywhere
      res.end(Buffer.alloc(300_000, 3));
    });
    const client = clientFor(s.port);
    const dest = path.join(tmpDir(), 'checkpoints', 'nolen.safetensors');
    try {
      await expect(runDownload(client, job(`${s.url}/nolen.safetensors`, dest, { freeSpace: async () => 100_000 }))).rejects.toMatchObject({
        code: 'INSUFFICIENT_STORAGE',
      });
      expect(fs.readdirSync(path.dirname(dest))).toEqual([]);
    } finally {
      client.close();
      await s.close();
    }
  });

  test('the temp file is never written through a symlink planted at its (predictable) name', async () => {
    const bytes = rand(5000);
    const s = await server((_req, res) => {
      res.writeHead(200, { 'content-length': bytes.length });
      res.end(bytes);
    });
    const client = clientFor(s.port);
    const root = tmpDir();
    const victim = path.join(root, 'victim.txt');
    fs.writeFileSync(victim, 'precious');
    const dest = path.join(root, 'checkpoints', 'link.safetensors');
    fs.mkdirSync(path.dirname(dest));
    fs.symlinkSync(victim, tmpPathFor(dest, 7));
    try {
      await runDownload(client, job(`${s.url}/link.safetensors`, dest)).catch(() => undefined);
      expect(fs.readFileSync(victim, 'utf8') === 'precious').toBe(true);
      // whatever happened, the model name is not a symlink to the victim
      if (fs.existsSync(dest)) expect(fs.lstatSync(dest).isSymbolicLink()).toBe(false);
    } finally {
      client.close();
      await s.close();
    }
  });
});

test("sweeping a second path to the same directory never deletes a running download's temp file", async () => {
  const s = await server((_req, res) => {
    res.writeHead(200, { 'content-length': 1_000_000 });
    res.write(Buffer.alloc(1000, 4)); // then stalls: the download stays running
  });
  const client = clientFor(s.port);
  const root = tmpDir();
  const real = path.join(root, 'text_encoders');
  fs.mkdirSync(real);
  const alias = path.join(root, 'clip');
  fs.symlinkSync(real, alias);
  const manager = createDownloadManager({
    http: client,
    maxConcurrent: 1,
    logger,
    audit: createAudit(logger),
    freeSpace: async () => 1e12,
    hfToken: async () => null,
  });
  try {
    const dest = path.join(real, 't.safetensors');
    expect(
      manager.schedule([{ modelId: 'text_encoders/t.safetensors', url: `${s.url}/t.safetensors`, dest, sha256: null, sizeHint: null }], {
        user: 'a',
        ip: '127.0.0.1',
      }),
    ).toBeNull();
    const tmpName = await waitFor(() => fs.readdirSync(real).find((n) => n.endsWith('.tmp')));
    // e.g. ComfyUI later reports the same directory through a symlinked path (extra_model_paths)
    expect(await manager.sweep([alias])).toBe(0);
    expect(fs.existsSync(path.join(real, tmpName))).toBe(true);
    expect(manager.get('text_encoders/t.safetensors')?.state).toBe('running');
  } finally {
    await manager.close();
    client.close();
    await s.close();
  }
});

test('a refresh that fails for a transient reason is not retried on every poll', async () => {
  let calls = 0;
  const api: HfApi = {
    endpoint: 'http://hf.invalid',
    authCheck: async () => 'ok',
    exchangeCode: async () => ({ access_token: 'at' }),
    refresh: async () => {
      calls++;
      throw Object.assign(new Error('token endpoint answered 503'), { status: 503 });
    },
    whoami: async () => null,
  };
  let now = 1_000_000;
  const store = createTokenStore({ dir: path.join(tmpDir(), 'hf_tokens'), hfApi: api, clientId: 'cid', logger, now: () => now });
  store.save('alice', { access_token: 'A1', refresh_token: 'R1', expires_in: 30 }, null);
  for (let i = 0; i < 5; i++) {
    expect(await store.valid('alice')).toBeNull();
    now += 1;
  }
  expect(calls).toBe(1);
  expect(store.has('alice')).toBe(true); // HF may recover: not logged out
  now += 60;
  await store.valid('alice');
  expect(calls).toBe(2);
});

describe('redirects', () => {
  test('redirect loops stop after 5 hops; relative and 307 Locations are resolved against the hop and re-checked', async () => {
    let hits = 0;
    const s = await server((req, res) => {
      hits++;
      const u = new URL(req.url ?? '/', 'http://x');
      if (u.pathname === '/loop.safetensors') return res.writeHead(302, { location: '/loop.safetensors' }).end();
      if (u.pathname === '/rel.safetensors') return res.writeHead(307, { location: 'sub/../final.bin?x=1' }).end();
      if (u.pathname === '/final.bin') return res.writeHead(200, { 'content-length': 2 }).end('ok');
      if (u.pathname === '/away.safetensors') return res.writeHead(301, { location: '//127.0.0.1:9/x' }).end();
      res.writeHead(404).end();
    });
    const client = clientFor(s.port);
    try {
      await expect(client.request(`${s.url}/loop.safetensors`, { method: 'GET', follow: true })).rejects.toThrow(/too many redirects/);
      expect(hits).toBe(6);
      const { res, url } = await client.request(`${s.url}/rel.safetensors`, { method: 'GET', follow: true });
      res.resume();
      expect([res.statusCode, url.pathname, url.search]).toEqual([200, '/final.bin', '?x=1']);
      // a scheme-relative Location to another port of the same address is another host to the allow-list
      await expect(client.request(`${s.url}/away.safetensors`, { method: 'GET', follow: true })).rejects.toBeInstanceOf(BlockedError);
    } finally {
      client.close();
      await s.close();
    }
  });

  test('numeric, IPv6, look-alike and encoded host forms never match a listed name', () => {
    const hosts = createHostPolicy({ allowedHosts: ['huggingface.co'], redirectHosts: [], hfEndpoint: 'https://huggingface.co' });
    const refused = [
      'https://[::]/x.safetensors',
      'https://[::ffff:127.0.0.1]/x.safetensors',
      'https://0.0.0.0/x.safetensors',
      'https://2130706433/x.safetensors',
      'https://0177.0.0.1/x.safetensors',
      'https://0x7f000001/x.safetensors',
      'https://huggingface.co@evil.example/x.safetensors',
      'https://huggingface.co%2eevil.example/x.safetensors',
      'https://huggingface.co./x.safetensors',
      'https://huggingface.co.evil.example/x.safetensors',
      'https://xn--huggingfce-9db.co/x.safetensors',
      'https://huggingfаce.co/x.safetensors', // Cyrillic "а"
      'https://huggingface.co:443@evil.example/x.safetensors',
    ];
    for (const u of refused) expect([u, hosts.checkInitial(u).ok]).toEqual([u, false]);
    // the same host spelled differently is still that host (and only that host)
    for (const u of [
      'https://HUGGINGFACE.CO/x.safetensors',
      'https://huggingface%2Eco/x.safetensors',
      'https://huggingface.co:443/x.safetensors',
    ])
      expect([u, hosts.checkInitial(u).ok]).toEqual([u, true]);
  });
});

// ─────────────────────────────── through the gateway ───────────────────────────────

describe('through the gateway', () => {
  let hf: FakeHf;
  let gw: TestGateway;
  let modelsDir: string;
  let endless: Awaited<ReturnType<typeof endlessServer>>;
  let slow: Awaited<ReturnType<typeof server>>;
  let slowMs = 300;
  let carol: Record<string, string>;
  let alice: Record<string, string>;
  let bob: Record<string, string>;
  let dana: Record<string, string>;
  const post = (p: string, body: unknown, who: Record<string, string> = KEY) => callApi(gw.url, 'POST', p, body, who);
  const entry = async (id: string, url: string, who: Record<string, string> = KEY) =>
    (await post('/api/models-availability-status', { models: { [id]: url } }, who)).body.models[id];
  // HF tokens are kept per account id
  const tokenFile = (user: string) => path.join(gw.config.paths.dataDir, 'hf_tokens', `${gw.composed.users.get(user)?.id ?? user}.json`);
  const writeToken = (user: string, t: Record<string, unknown>) => {
    fs.mkdirSync(path.dirname(tokenFile(user)), { recursive: true, mode: 0o700 });
    fs.writeFileSync(tokenFile(user), JSON.stringify({ scope: '', hf_username: null, refresh_token: null, ...t }), { mode: 0o600 });
  };

  const userWith = (username: string, permissions: string[]) => userWithVia(gw.url, KEY, username, permissions, PW);

  beforeAll(async () => {
    hf = await startFakeHf();
    endless = await endlessServer();
    // a model host that takes a while to answer a HEAD
    slow = await server((_req, res) => void setTimeout(() => res.writeHead(200, { 'content-length': 10 }).end(), slowMs));
    modelsDir = tmpDir('cgw-attack-models-');
    fs.mkdirSync(path.join(modelsDir, 'text_encoders'));
    fs.symlinkSync(path.join(modelsDir, 'text_encoders'), path.join(modelsDir, 'clip'));
    gw = await startGateway(
      {
        api_key: TEST_KEY,
        upstream: 'http://127.0.0.1:9',
        comfyui: { models_dir: modelsDir },
        model_downloads: {
          allowed_hosts: [hf.host, `127.0.0.1:${slow.port}`],
          redirect_hosts: [hf.cdnHost, `localhost:${endless.port}`],
          max_concurrent: 4,
        },
        hf_oauth: { client_id: hf.clientId, callback_port: 0 },
      },
      { env: { HF_ENDPOINT: hf.url } },
    );
    // Tokens placed before the gateway first looks (it reads a user's file once, then keeps it in memory).
    writeToken('api-key', { access_token: hf.issueToken('hf-admin'), expires_at: Date.now() / 1000 + 3600 });
    alice = await userWith('alice', ['download_models']);
    bob = await userWith('bob', ['download_models']);
    dana = await userWith('dana', ['download_models']);
    // dana's file is named by her account id, known once the account exists (nothing has read it yet)
    writeToken('dana', { access_token: 'hf_expired', refresh_token: 'hf_rt_revoked', expires_at: Date.now() / 1000 - 10 });
    carol = await userWith('carol', []);
  });

  afterAll(async () => {
    await gw?.close();
    await hf?.close();
    await endless?.close();
    await slow?.close();
  });

  test('a server that announces a size and then streams forever is cut off at that size (SIZE_MISMATCH)', async () => {
    const f = hf.addFile('att/endless', 'endless.safetensors', rand(1000), { redirectTo: `http://localhost:${endless.port}/blob` });
    const id = 'checkpoints/endless.safetensors';
    expect((await post('/api/download-models', { models: { [id]: f.url } })).status).toBe(202);
    try {
      const e = await waitFor(async () => {
        const x = await entry(id, f.url);
        return x.last_error ? x : null;
      }, 8000);
      expect(e.last_error.code).toBe('SIZE_MISMATCH');
      await waitFor(() => endless.open() === 0);
      expect(endless.sent()).toBeLessThan(8 * 1024 * 1024);
      expect(fs.readdirSync(path.join(modelsDir, 'checkpoints')).filter((n) => n.startsWith('endless'))).toEqual([]);
    } finally {
      await post('/api/cancel-model-download-session', { model_id: id });
    }
  });

  test("two users racing through aliased folders: the second finisher never replaces the first one's model", async () => {
    const slowBytes = rand(150_000);
    const fastBytes = rand(20_000);
    const slow = hf.addFile('att/race-a', 't5.safetensors', slowBytes, { throttleBytesPerSec: 100_000 });
    const fast = hf.addFile('att/race-b', 't5.safetensors', fastBytes);
    // models/clip is a symlink to models/text_encoders: two model ids, one file
    expect((await post('/api/download-models', { models: { 'text_encoders/t5.safetensors': slow.url } }, alice)).status).toBe(202);
    await waitFor(async () => (await entry('text_encoders/t5.safetensors', slow.url)).progress?.bytes_downloaded > 0);
    expect((await post('/api/download-models', { models: { 'clip/t5.safetensors': fast.url } }, bob)).status).toBe(202);
    const file = path.join(modelsDir, 'text_encoders', 't5.safetensors');
    await waitFor(() => fs.existsSync(file));
    expect(fs.readFileSync(file).equals(fastBytes)).toBe(true);
    await waitFor(async () => (await entry('text_encoders/t5.safetensors', slow.url)).state !== 'downloading', 10_000);
    expect(fs.readFileSync(file).equals(fastBytes)).toBe(true);
    expect(fs.readdirSync(path.join(modelsDir, 'text_encoders')).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    const logs = await flushedLogs(gw);
    expect(logs.some((l) => l.event === 'model_download_failed' && l.user === 'alice' && l.code === 'ALREADY_AVAILABLE')).toBe(true);
  });

  test('only the user who started a download, or an admin, may cancel it', async () => {
    const f = hf.addFile('att/cancel', 'c.safetensors', rand(400_000), { throttleBytesPerSec: 50_000 });
    const id = 'loras/c.safetensors';
    expect((await post('/api/download-models', { models: { [id]: f.url } }, alice)).status).toBe(202);
    await waitFor(async () => (await entry(id, f.url)).progress?.bytes_downloaded > 0);
    const byBob = await post('/api/cancel-model-download-session', { model_id: id }, bob);
    expect([byBob.status, byBob.body.error.code]).toEqual([403, 'FORBIDDEN']);
    expect((await entry(id, f.url)).state).toBe('downloading');
    expect((await post('/api/cancel-model-download-session', { model_id: id }, alice)).body).toEqual({ cancelled: true });

    expect((await post('/api/download-models', { models: { [id]: f.url } }, bob)).status).toBe(202);
    expect((await post('/api/cancel-model-download-session', { model_id: id }, KEY)).body).toEqual({ cancelled: true });
    const logs = await flushedLogs(gw);
    expect(logs.some((l) => l.event === 'model_download_cancel' && l.user === 'api-key' && l.started_by === 'bob')).toBe(true);
    expect(logs.some((l) => l.event === 'model_download_cancel' && l.user === 'bob')).toBe(false);
  });

  test('20 clients × 50 models at 1 Hz: no HF request once cached, gated models of a logged-in caller included', async () => {
    const models: Record<string, string> = {};
    for (let r = 0; r < 5; r++)
      for (let i = 0; i < 5; i++)
        models[`checkpoints/g${r}-${i}.safetensors`] = hf.addFile(`att/poll-gated-${r}`, `g${i}.safetensors`, rand(100), {
          gated: true,
        }).url;
    for (let i = 0; i < 25; i++) models[`loras/p${i}.safetensors`] = hf.addFile('att/poll-public', `p${i}.safetensors`, rand(100)).url;
    const round = () => Promise.all(Array.from({ length: 20 }, () => post('/api/models-availability-status', { models })));
    const first = await round();
    expect(first.every((r) => Object.values(r.body.models).every((e: any) => e.is_hf_downloadable === true && e.file_size === 100))).toBe(
      true,
    );
    const before = hf.requests.length;
    for (let i = 0; i < 2; i++) {
      await new Promise((r) => setTimeout(r, 1100));
      await round();
    }
    expect(hf.requests.slice(before).map((r) => r.url)).toEqual([]);
  });

  test("one signed-in user polling hundreds of new URLs cannot starve everyone else's probes", async () => {
    // carol may not even download: polling is open to every signed-in user
    const flood = Object.fromEntries(
      Array.from({ length: 200 }, (_, i) => [`loras/f${i}.safetensors`, `${slow.url}/flood-${i}.safetensors`]),
    );
    const attack = post('/api/models-availability-status', { models: flood }, carol);
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    const mine = await entry('checkpoints/mine.safetensors', `${slow.url}/mine.safetensors`, alice);
    const took = Date.now() - t0;
    expect(mine.file_size).toBe(10);
    expect(took).toBeLessThan(1500); // one 300 ms probe, not ~4 s behind carol's 200
    slowMs = 0;
    expect((await attack).status).toBe(200);
  });

  test('model ids smuggling a path through Unicode, NUL or encodings are refused, and nothing is written outside', async () => {
    const ok = hf.addFile('att/ids', 'i.safetensors', rand(10)).url;
    const bad = [
      'checkpoints/\u2024\u2024', // one-dot leaders
      'checkpoints/\uff0e\uff0e/x.pt', // full-width dots
      'checkpoints\u2215x.pt', // division slash
      'checkpoints\u2044x.pt', // fraction slash
      'checkpoints/x.pt\u0000.safetensors',
      'checkpoints/%2e%2e%2fx.pt',
      'checkpoints/..%2fx.pt',
      'checkpoints/x\u200b.pt', // zero-width space
      'checkpoints/caf\u00e9.pt',
      'CHECKPOINTS/x.pt', // folders are case-sensitive, as ComfyUI's
    ];
    for (const id of bad) {
      const r = await post('/api/download-models', { models: { [id]: ok } });
      expect([id, r.status, r.body.error.code]).toEqual([id, 400, 'INVALID_MODEL_ID']);
    }
    expect(fs.readdirSync(path.dirname(modelsDir)).filter((n) => n === 'x.pt')).toEqual([]);
  });

  test('a refresh token HF rejects is dropped (logged out), not retried on every poll', async () => {
    const g = hf.addFile('att/refresh', 'r.safetensors', rand(100), { gated: true });
    const before = hf.tokenRequests.filter((t) => t.grant_type === 'refresh_token').length;
    for (let i = 0; i < 3; i++) expect((await entry('checkpoints/r.safetensors', g.url, dana)).is_hf_downloadable).toBe(false);
    expect(hf.tokenRequests.filter((t) => t.grant_type === 'refresh_token').length - before).toBe(1);
    expect((await callApi(gw.url, 'GET', '/api/hf-auth-token-status', undefined, dana)).body).toEqual({
      token_available: false,
      username: null,
    });
    expect(fs.existsSync(tokenFile('dana'))).toBe(false);
  });
});

describe('HF login through the gateway (hf_oauth.redirect_uri)', () => {
  test("one user's unfinished login does not block another user's; each callback stays bound to its user", async () => {
    const hf = await startFakeHf();
    const gw = await startGateway(
      {
        api_key: TEST_KEY,
        upstream: 'http://127.0.0.1:9',
        comfyui: { models_dir: tmpDir() },
        model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost] },
        hf_oauth: { client_id: hf.clientId, callback_port: 0, redirect_uri: 'https://gw.example/api/auth/huggingface/callback' },
      },
      { env: { HF_ENDPOINT: hf.url } },
    );
    try {
      const who: Record<string, Record<string, string>> = {};
      for (const u of ['erin', 'frank']) {
        await callApi(
          gw.url,
          'POST',
          '/gateway/api/users',
          { username: u, password: PW, role: 'user', permissions: ['download_models'] },
          KEY,
        );
        who[u] = { authorization: `Bearer ${(await callApi(gw.url, 'POST', '/login', { username: u, password: PW })).body.token}` };
      }
      const start = (u: string) => callApi(gw.url, 'POST', '/api/hf-auth-login-start', {}, who[u]);
      const e = await start('erin');
      expect(e.status).toBe(200);
      // erin walks away; frank must still be able to log in
      const f = await start('frank');
      expect([f.status, f.body.error?.code]).toEqual([200, undefined]);
      const again = await start('erin');
      expect([again.status, again.body.error.code]).toEqual([409, 'HF_AUTH_IN_PROGRESS']);

      hf.oauthUser = 'hf-frank';
      const fl = new URL(await hf.authorize(f.body.authorize_url));
      hf.oauthUser = 'hf-erin';
      const el = new URL(await hf.authorize(e.body.authorize_url));
      const tokenCalls = hf.tokenRequests.length;
      // erin's session on frank's callback: refused, nothing exchanged
      expect((await fetch(`${gw.url}${fl.pathname}${fl.search}`, { headers: who.erin })).status).toBe(403);
      expect(hf.tokenRequests.length).toBe(tokenCalls);
      expect((await fetch(`${gw.url}${fl.pathname}${fl.search}`, { headers: who.frank })).status).toBe(200);
      expect((await fetch(`${gw.url}${el.pathname}${el.search}`, { headers: who.erin })).status).toBe(200);
      // state reuse: the finished logins are gone
      expect((await fetch(`${gw.url}${el.pathname}${el.search}`, { headers: who.erin })).status).toBe(400);
      expect(hf.tokenRequests.length).toBe(tokenCalls + 2);
      for (const u of ['erin', 'frank'])
        expect((await callApi(gw.url, 'GET', '/api/hf-auth-token-status', undefined, who[u])).body).toEqual({
          token_available: true,
          username: `hf-${u}`,
        });
    } finally {
      await gw.close();
      await hf.close();
    }
  });
});

/**
 * Issue 6, the parts easier to pin down alone: folder-path parsing (both upstream formats), the token store's
 * refresh/logout race and file hygiene, and the login timeout that frees the callback port.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { createAudit } from '../gateway/audit';
import { folderMapFromUpstream } from '../gateway/downloads/folders';
import type { HfApi, HfTokenResponse } from '../gateway/downloads/hfApi';
import { parseModelId } from '../gateway/downloads/modelId';
import { createHfOAuth } from '../gateway/downloads/oauth';
import { sha256FromEtag } from '../gateway/downloads/probe';
import { createTokenStore, tokenFileName } from '../gateway/downloads/tokens';
import { runDownload, TMP_PATTERN } from '../gateway/downloads/worker';
import { createHostPolicy } from '../gateway/downloads/hosts';
import { createSafeHttp } from '../gateway/downloads/safeHttp';
import http from 'node:http';

const logger = pino({ level: 'silent' });
const dirs: string[] = [];
const tmpDir = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-dl-unit-'));
  dirs.push(d);
  return d;
};
afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

function stubApi(over: Partial<HfApi> = {}): HfApi {
  return {
    endpoint: 'http://hf.invalid',
    authCheck: async () => 'ok',
    exchangeCode: async () => ({ access_token: 'at', refresh_token: 'rt', expires_in: 3600 }),
    refresh: async () => ({ access_token: 'at2', expires_in: 3600 }),
    whoami: async () => 'someone',
    ...over,
  };
}

test('folder paths: both upstream shapes; custom_nodes, configs and non-model folders are left out', () => {
  const m = folderMapFromUpstream({
    checkpoints: ['/m/checkpoints', '/o/checkpoints'],
    configs: ['/m/configs'],
    custom_nodes: ['/c'],
    loras: [['/m/loras'], ['.safetensors', '.pt']],
    diffusers: [['/m/diffusers'], ['folder']],
    classifiers: [['/m/classifiers'], ['']],
    bad: 'x',
    relative: ['not/absolute'],
    '../up': ['/x'],
  });
  expect([...m.entries()]).toEqual([
    ['checkpoints', ['/m/checkpoints', '/o/checkpoints']],
    ['loras', ['/m/loras']],
  ]);
  const known = new Set(m.keys());
  expect(parseModelId('loras/x.pt', known)).toEqual({ folder: 'loras', file: 'x.pt' });
  expect(typeof parseModelId('configs/x.pt', known)).toBe('string');
});

test('temp names and etags', () => {
  expect(TMP_PATTERN.test('a.safetensors.1712345678901.tmp')).toBe(true);
  expect(TMP_PATTERN.test('a.safetensors.tmp')).toBe(false);
  expect(TMP_PATTERN.test('notes.1.tmp')).toBe(false);
  expect(sha256FromEtag(`"${'A'.repeat(64)}"`)).toBe('a'.repeat(64));
  expect(sha256FromEtag('"abc"')).toBeNull();
  expect(tokenFileName('alice')).toBe('alice.json');
  expect(tokenFileName('../x')).toMatch(/^u-[0-9a-f]{64}\.json$/);
  expect(tokenFileName('bob@example.com')).toMatch(/^u-[0-9a-f]{64}\.json$/);
});

test('token store: 0600 atomic files, refresh near expiry, a logout during a refresh wins', async () => {
  const dir = tmpDir();
  let now = 1_000_000;
  let release: (v: HfTokenResponse) => void = () => undefined;
  const api = stubApi({ refresh: () => new Promise((r) => (release = r)) });
  const store = createTokenStore({ dir: path.join(dir, 'hf_tokens'), hfApi: api, clientId: 'cid', logger, now: () => now });
  store.save('alice', { access_token: 'A1', refresh_token: 'R1', expires_in: 120 }, 'hf-a');
  const file = path.join(dir, 'hf_tokens', 'alice.json');
  expect(fs.statSync(file).mode & 0o777).toBe(0o600);
  expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
  expect(fs.readdirSync(path.dirname(file))).toEqual(['alice.json']);
  expect(await store.valid('alice')).toBe('A1');
  now += 61; // inside the 60 s window
  const pending = store.valid('alice');
  const again = store.valid('alice'); // single-flight
  store.remove('alice');
  release({ access_token: 'A2', refresh_token: 'R2', expires_in: 3600 });
  expect(await pending).toBeNull();
  expect(await again).toBeNull();
  expect(store.has('alice')).toBe(false);
  expect(fs.existsSync(file)).toBe(false);
  expect(store.remove('alice')).toBe(false);

  // a corrupt file is "logged out", not a crash
  fs.writeFileSync(path.join(dir, 'hf_tokens', 'bob.json'), '{nope');
  const fresh = createTokenStore({ dir: path.join(dir, 'hf_tokens'), hfApi: api, clientId: 'cid', logger });
  expect(fresh.has('bob')).toBe(false);
  expect(await fresh.valid('bob')).toBeNull();
});

test('a login that is never completed times out and frees the callback port', async () => {
  const tokens = createTokenStore({ dir: tmpDir(), hfApi: stubApi(), clientId: 'cid', logger });
  const oauth = createHfOAuth({
    clientId: 'cid',
    callbackPort: 0,
    redirectUri: null,
    hfApi: stubApi(),
    tokens,
    logger,
    audit: createAudit(logger),
    timeoutMs: 150,
  });
  const url = new URL(await oauth.start('alice', '127.0.0.1'));
  const port = Number(new URL(url.searchParams.get('redirect_uri')!).port);
  expect(oauth.inProgress()).toBe(true);
  await expect(oauth.start('bob', '127.0.0.1')).rejects.toMatchObject({ code: 'HF_AUTH_IN_PROGRESS', status: 409 });
  await new Promise((r) => setTimeout(r, 300));
  expect(oauth.inProgress()).toBe(false);
  const refused = await new Promise<boolean>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(false)));
    s.once('error', () => resolve(true));
  });
  expect(refused).toBe(true);
  await oauth.close();
});

test('a body cut right after the headers is noticed even when the disk check is slow (no hang), and nothing is left', async () => {
  let gets = 0;
  const server = http.createServer((req, res) => {
    gets++;
    res.writeHead(req.headers.range ? 206 : 200, {
      'content-length': 1000,
      ...(req.headers.range ? { 'content-range': `bytes ${/\d+/.exec(req.headers.range)![0]}-999/1000` } : {}),
    });
    res.write(Buffer.alloc(10));
    setImmediate(() => res.socket?.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const client = createSafeHttp({
    hosts: createHostPolicy({ allowedHosts: [`127.0.0.1:${port}`], redirectHosts: [], hfEndpoint: 'https://huggingface.co' }),
  });
  const dest = path.join(tmpDir(), 'checkpoints', 'cut.safetensors');
  try {
    const t0 = Date.now();
    await expect(
      runDownload(client, {
        url: `http://127.0.0.1:${port}/cut.safetensors`,
        dest,
        epoch: 1,
        sha256: null,
        hfToken: null,
        signal: new AbortController().signal,
        progress: () => undefined,
        freeSpace: async () => (await new Promise((r) => setTimeout(r, 100)), 1e12),
        isActive: () => true,
      }),
    ).rejects.toMatchObject({ code: 'DOWNLOAD_FAILED' });
    expect(Date.now() - t0).toBeLessThan(8000);
    expect(gets).toBe(4); // the first attempt and three resumes
    expect(fs.readdirSync(path.dirname(dest))).toEqual([]);
  } finally {
    client.close();
    server.close();
  }
});

/**
 * Issue 6: the download client never reaches what the allow-list does not name — userinfo tricks, look-alike hosts,
 * other ports, plain http, redirects to private or unlisted hosts, names that resolve to private addresses — and a
 * refused URL never opens a connection.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createHostPolicy, parseHostRule } from '../gateway/downloads/hosts';
import { BlockedError, createSafeHttp } from '../gateway/downloads/safeHttp';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { callApi, startFakeHf, waitFor, type FakeHf } from './helpers/fakeHf';

const KEY = { 'x-api-key': TEST_KEY };

/** A server that would happily serve a "model" to anyone: it only counts who connects. */
function countingServer(): Promise<{ port: number; connections: () => number; close: () => Promise<void> }> {
  let n = 0;
  const server = http.createServer((_req, res) => res.end(Buffer.alloc(64)));
  server.on('connection', () => n++);
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: (server.address() as AddressInfo).port,
        connections: () => n,
        close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
      }),
    ),
  );
}

let hf: FakeHf;
let gw: TestGateway;
let trap: Awaited<ReturnType<typeof countingServer>>;
let modelsDir: string;
const post = (p: string, body: unknown) => callApi(gw.url, 'POST', p, body, KEY);
const entry = async (id: string, url: string) => (await post('/api/models-availability-status', { models: { [id]: url } })).body.models[id];

beforeAll(async () => {
  hf = await startFakeHf();
  trap = await countingServer();
  modelsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-ssrf-'));
  gw = await startGateway(
    {
      api_key: TEST_KEY,
      upstream: 'http://127.0.0.1:9',
      comfyui: { models_dir: modelsDir },
      // `localhost` without a port: a plain name, which must not resolve to a private address
      model_downloads: { allowed_hosts: [hf.host, 'huggingface.co', 'localhost'], redirect_hosts: [hf.cdnHost] },
    },
    { env: { HF_ENDPOINT: hf.url } },
  );
});

afterAll(async () => {
  await gw?.close();
  await hf?.close();
  await trap?.close();
  fs.rmSync(modelsDir, { recursive: true, force: true });
});

test('URLs outside the allow-list are refused with URL_NOT_ALLOWED before any connection', async () => {
  const hfPort = new URL(hf.url).port;
  const P = trap.port;
  const bad = [
    `http://127.0.0.1:${P}/x.safetensors`, // unlisted port of a listed address
    `http://${hf.host}@127.0.0.1:${P}/x.safetensors`, // userinfo: the real host is the trap
    `http://user:pw@${hf.host}/org/r/resolve/main/x.safetensors`, // userinfo on a listed host
    `http://${hf.host}:x@127.0.0.1:${P}/x.safetensors`,
    `http://127.0.0.1:${P}#@${hf.host}/x.safetensors`,
    `http://127.0.0.1:${P}\\@${hf.host}/x.safetensors`,
    `http://localhost:${P}/x.safetensors`,
    `http://localhost:${hfPort}/org/r/resolve/main/x.safetensors`, // same port, different name than listed
    `http://0x7f.0.0.1:${P}/x.safetensors`,
    `http://[::ffff:127.0.0.1]:${P}/x.safetensors`,
    `http://127.0.0.1.nip.io:${hfPort}/org/r/resolve/main/x.safetensors`,
    'https://huggingface.co.evil.example/x.safetensors',
    'https://evil-huggingface.co/x.safetensors',
    'https://huggingface.co.:443/x.safetensors',
    'https://huggingface.co:8443/x.safetensors',
    'http://huggingface.co/x.safetensors', // plain http
    'https://xn--huggingface-xyz.co/x.safetensors',
    'https://huggingface.co/api/whoami-v2', // not a model file
    ' https://huggingface.co/x.safetensors',
    'https://hugging\tface.co/x.safetensors',
    'file:///etc/passwd.safetensors',
    'ftp://huggingface.co/x.safetensors',
    'https://169.254.169.254/latest/x.safetensors',
    'not a url',
  ];
  for (const url of bad) {
    const r = await post('/api/download-models', { models: { 'checkpoints/x.safetensors': url } });
    expect([url, r.status, r.body.error.code]).toEqual([url, 400, 'URL_NOT_ALLOWED']);
    const e = await entry('checkpoints/x.safetensors', url);
    expect(e).toEqual({ state: 'missing', progress: null, file_size: null, is_hf_downloadable: null });
  }
  expect(trap.connections()).toBe(0);
});

test('a listed name that resolves to loopback is refused at DNS time, for downloads and probes alike', async () => {
  const url = 'https://localhost/org/x.safetensors';
  const r = await post('/api/download-models', { models: { 'checkpoints/local.safetensors': url } });
  expect([r.status, r.body.error.code]).toEqual([400, 'URL_NOT_ALLOWED']);
  expect(r.body.error.message).toMatch(/private, loopback or link-local/);
  expect((await entry('checkpoints/local.safetensors', url)).file_size).toBeNull();
});

describe('redirect hops are re-checked', () => {
  const cases: [string, () => string][] = [
    ['an unlisted port on loopback', () => `http://127.0.0.1:${trap.port}/x.safetensors`],
    ['a look-alike of the CDN host on another port', () => `http://localhost:${trap.port}/repos/x`],
    ['the cloud metadata address', () => 'http://169.254.169.254/latest/meta-data/'],
    ['userinfo on the CDN host', () => `http://user:pw@${hf.cdnHost}/repos/x`],
    ['a listed plain name resolving to loopback', () => `https://localhost/x.safetensors`],
    ['plain http to a public host', () => 'http://huggingface.co/x.safetensors'],
    ['a non-http scheme', () => 'file:///etc/passwd'],
  ];
  test.each(cases)('a redirect to %s fails the download with URL_NOT_ALLOWED', async (_name, target) => {
    const id = `checkpoints/r-${crypto.randomBytes(4).toString('hex')}.safetensors`;
    const f = hf.addFile('org/redir', `${path.basename(id)}`, crypto.randomBytes(100), { redirectTo: target() });
    const r = await post('/api/download-models', { models: { [id]: f.url } });
    expect(r.status).toBe(202);
    const e = await waitFor(async () => {
      const x = await entry(id, f.url);
      return x.last_error ? x : null;
    });
    expect(e.state).toBe('missing');
    expect(e.last_error.code).toBe('URL_NOT_ALLOWED');
    expect(fs.readdirSync(path.join(modelsDir, 'checkpoints')).filter((n) => n.startsWith('r-'))).toEqual([]);
    expect(trap.connections()).toBe(0);
  });
});

describe('the connection guard itself', () => {
  const resolverFor = (answers: Record<string, string[]>) => async (h: string) =>
    (answers[h] ?? []).map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));

  test.each([
    ['loopback', ['127.0.0.1']],
    ['a private address', ['10.1.2.3']],
    ['link-local', ['169.254.169.254']],
    ['IPv6 loopback', ['::1']],
    ['IPv6 unique-local', ['fd00::1']],
    ['IPv4-mapped loopback', ['::ffff:127.0.0.1']],
    ['a public address mixed with a private one', ['8.8.8.8', '192.168.1.1']],
    ['carrier-grade NAT', ['100.64.0.1']],
    ['unspecified', ['0.0.0.0']],
  ])('a plain name resolving to %s is refused before connecting', async (_n, addrs) => {
    const hosts = createHostPolicy({ allowedHosts: ['models.example'], redirectHosts: [], hfEndpoint: 'https://huggingface.co' });
    const client = createSafeHttp({ hosts, resolver: resolverFor({ 'models.example': addrs }) });
    try {
      // Were a connection attempted, 127.0.0.1:443 would refuse it (ECONNREFUSED) instead of the guard's error.
      await expect(client.request('https://models.example/x.safetensors', { method: 'GET', follow: true })).rejects.toBeInstanceOf(
        BlockedError,
      );
    } finally {
      client.close();
    }
  });

  test('an explicitly listed host:port may resolve to loopback; plain http only for a loopback name', async () => {
    const hosts = createHostPolicy({
      allowedHosts: [`models.test:${trap.port}`, `localhost:${trap.port}`],
      redirectHosts: [],
      hfEndpoint: 'https://huggingface.co',
    });
    const client = createSafeHttp({ hosts, resolver: resolverFor({ 'models.test': ['127.0.0.1'], localhost: ['127.0.0.1'] }) });
    const before = trap.connections();
    try {
      await expect(client.request(`http://models.test:${trap.port}/x.safetensors`, { method: 'GET', follow: true })).rejects.toBeInstanceOf(
        BlockedError,
      );
      expect(trap.connections()).toBe(before);
      const { res } = await client.request(`http://localhost:${trap.port}/x.safetensors`, { method: 'GET', follow: true });
      res.resume();
      expect(res.statusCode).toBe(200);
      expect(trap.connections()).toBe(before + 1);
    } finally {
      client.close();
    }
  });

  test('allow-list entries parse strictly', () => {
    expect(parseHostRule('HuggingFace.co')).toEqual({ host: 'huggingface.co', port: null, allowPrivate: false, allowHttp: false });
    expect(parseHostRule('localhost:8080')).toEqual({ host: 'localhost', port: 8080, allowPrivate: true, allowHttp: true });
    expect(parseHostRule('[::1]:9')).toEqual({ host: '[::1]', port: 9, allowPrivate: true, allowHttp: true });
    expect(parseHostRule('mirror.lan:443')).toEqual({ host: 'mirror.lan', port: 443, allowPrivate: true, allowHttp: false });
    for (const bad of ['https://huggingface.co', 'a b', 'host:0', 'host:70000', 'user@host', ''])
      expect(() => parseHostRule(bad)).toThrow();
  });
});

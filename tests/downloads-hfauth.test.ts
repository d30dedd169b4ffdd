/**
 * Issue 6, behind identity: per-user HuggingFace tokens (OAuth PKCE S256 with a state bound to the user, one-shot
 * loopback callback, atomic 0600 token files, refresh before expiry, logout of only the caller's token), the
 * download_models permission, eligibility, and the gateway-routed callback (hf_oauth.redirect_uri).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startGateway, TEST_KEY, flushedLogs, type TestGateway } from './helpers/gateway';
import { callApi, startFakeHf, waitFor, type FakeHf, type JsonReply } from './helpers/fakeHf';

const KEY = { 'x-api-key': TEST_KEY };
/** A user's HF token file: kept per account id, not per name. */
const tokenFile = (gw: TestGateway, user: string) =>
  path.join(gw.config.paths.dataDir, 'hf_tokens', `${gw.composed.users.get(user)!.id}.json`);
const PW = 'correct-horse-battery-1';

let hf: FakeHf;
const dirs: string[] = [];
/** every response body the tests received, to prove no HF token ever went to a client */
const seen: string[] = [];

async function call(gw: TestGateway, method: string, p: string, body: unknown, headers: Record<string, string>): Promise<JsonReply> {
  const r = await callApi(gw.url, method, p, body, headers);
  seen.push(r.text);
  return r;
}

async function bootGateway(extra: Record<string, unknown> = {}, hfOauth: Record<string, unknown> = {}) {
  const modelsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-hfauth-'));
  dirs.push(modelsDir);
  return startGateway(
    {
      api_key: TEST_KEY,
      upstream: 'http://127.0.0.1:9',
      comfyui: { models_dir: modelsDir },
      model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost] },
      hf_oauth: { client_id: hf.clientId, callback_port: 0, ...hfOauth },
      ...extra,
    },
    { env: { HF_ENDPOINT: hf.url } },
  );
}

/** Creates a user through the admin API and signs in; returns Bearer headers. */
async function userWith(gw: TestGateway, username: string, permissions: string[], role = 'user'): Promise<Record<string, string>> {
  const c = await callApi(gw.url, 'POST', '/gateway/api/users', { username, password: PW, role, permissions }, KEY);
  if (c.status !== 201 && c.status !== 200) throw new Error(`create ${username}: ${c.status} ${c.text}`);
  const l = await callApi(gw.url, 'POST', '/login', { username, password: PW });
  if (l.status !== 200) throw new Error(`login ${username}: ${l.status} ${l.text}`);
  return { authorization: `Bearer ${l.body.token}` };
}

/** Runs the whole browser side of a login: start, consent at the fake HF, land on the callback. */
async function hfLogin(gw: TestGateway, who: Record<string, string>): Promise<{ authorizeUrl: string; callback: Response }> {
  const s = await call(gw, 'POST', '/api/hf-auth-login-start', {}, who);
  if (s.status !== 200) throw new Error(`login-start: ${s.status} ${s.text}`);
  const cb = await hf.authorize(s.body.authorize_url);
  const callback = await fetch(cb);
  seen.push(await callback.clone().text());
  return { authorizeUrl: s.body.authorize_url, callback };
}

beforeAll(async () => {
  hf = await startFakeHf();
});

afterAll(async () => {
  await hf?.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('per-user HuggingFace login (loopback callback)', () => {
  let gw: TestGateway;
  let alice: Record<string, string>;
  let bob: Record<string, string>;
  let carol: Record<string, string>;
  let gated: { url: string; sha256: string };
  let gatedBytes: Buffer;

  beforeAll(async () => {
    gw = await bootGateway();
    alice = await userWith(gw, 'alice', ['download_models']);
    bob = await userWith(gw, 'bob', ['download_models']);
    carol = await userWith(gw, 'carol', []);
    gatedBytes = crypto.randomBytes(120_000);
    gated = hf.addFile('meta/gated-model', 'g.safetensors', gatedBytes, { gated: true });
  });
  afterAll(async () => {
    await gw?.close();
  });

  const poll = (who: Record<string, string>, models: Record<string, string>, extra: Record<string, string> = {}) =>
    call(gw, 'POST', '/api/models-availability-status', { models }, { ...who, ...extra });

  test('eligibility: may download, and the browser is on this host', async () => {
    expect((await poll(alice, {})).body.hf_auth).toEqual({ token_available: false, eligible: true });
    expect((await poll(carol, {})).body.hf_auth).toEqual({ token_available: false, eligible: false });
    // a forwarding header means a proxy or tunnel put this request on loopback: the browser is elsewhere
    expect((await poll(alice, {}, { 'x-forwarded-for': '203.0.113.9' })).body.hf_auth.eligible).toBe(false);
    const c = await call(gw, 'POST', '/api/hf-auth-login-start', {}, carol);
    expect([c.status, c.body.error.code]).toEqual([403, 'HF_AUTH_NOT_ELIGIBLE']);
    const f = await call(gw, 'POST', '/api/hf-auth-login-start', {}, { ...alice, 'x-forwarded-for': '203.0.113.9' });
    expect([f.status, f.body.error.code]).toEqual([403, 'HF_AUTH_NOT_ELIGIBLE']);
    expect(hf.count('/oauth/')).toBe(0);
  });

  test('login: PKCE S256, state bound to the user, one at a time, wrong state never exchanged', async () => {
    const s = await call(gw, 'POST', '/api/hf-auth-login-start', {}, alice);
    expect(s.status).toBe(200);
    expect(Object.keys(s.body)).toEqual(['authorize_url']);
    const u = new URL(s.body.authorize_url);
    expect(u.origin + u.pathname).toBe(`${hf.url}/oauth/authorize`);
    const q = u.searchParams;
    expect(q.get('client_id')).toBe(hf.clientId);
    expect(q.get('response_type')).toBe('code');
    expect(q.get('scope')).toBe('openid profile gated-repos');
    expect(q.get('code_challenge_method')).toBe('S256');
    expect(q.get('code_challenge')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(q.get('state')).toMatch(/^[A-Za-z0-9_-]{43}$/); // 32 random bytes
    const redirect = new URL(q.get('redirect_uri')!);
    expect(redirect.hostname).toBe('127.0.0.1');
    expect(redirect.pathname).toBe('/api/auth/huggingface/callback');
    expect(Number(redirect.port)).toBeGreaterThan(0);

    const busy = await call(gw, 'POST', '/api/hf-auth-login-start', {}, bob);
    expect([busy.status, busy.body.error.code]).toEqual([409, 'HF_AUTH_IN_PROGRESS']);

    // A forged callback (wrong state) is refused and never reaches HF's token endpoint.
    const forged = await fetch(`${redirect.origin}${redirect.pathname}?code=stolen&state=${'A'.repeat(43)}`);
    expect(forged.status).toBe(400);
    expect(hf.tokenRequests).toEqual([]);

    const cb = await hf.authorize(s.body.authorize_url);
    expect(cb.startsWith(redirect.toString())).toBe(true);
    const done = await fetch(cb);
    expect(done.status).toBe(200);
    expect(done.headers.get('content-type')).toMatch(/text\/html/);
    expect(hf.tokenRequests).toEqual([{ grant_type: 'authorization_code', pkceOk: true }]);
    // one-shot: the callback server is gone
    await expect(fetch(cb)).rejects.toThrow();

    expect((await call(gw, 'GET', '/api/hf-auth-token-status', undefined, alice)).body).toEqual({
      token_available: true,
      username: 'hf-alice',
    });
    expect((await call(gw, 'GET', '/api/hf-auth-token-status', undefined, bob)).body).toEqual({ token_available: false, username: null });

    const file = tokenFile(gw, 'alice');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.existsSync(tokenFile(gw, 'bob'))).toBe(false);
    const logs = await flushedLogs(gw);
    expect(logs.some((l) => l.event === 'hf_auth_login' && l.user === 'alice')).toBe(true);
  });

  test("only alice's downloads use alice's token; bob gets nothing from it", async () => {
    const models = { 'checkpoints/g.safetensors': gated.url };
    const a = await poll(alice, models);
    expect(a.body.models['checkpoints/g.safetensors']).toEqual({
      state: 'missing',
      progress: null,
      file_size: 120_000,
      is_hf_downloadable: true,
    });
    expect(a.body.hf_auth).toEqual({ token_available: true, eligible: true });
    const b = await poll(bob, models);
    expect(b.body.models['checkpoints/g.safetensors'].is_hf_downloadable).toBe(false);
    expect(b.body.hf_auth.token_available).toBe(false);

    const hfBefore = hf.requests.length;
    const refused = await call(gw, 'POST', '/api/download-models', { models }, bob);
    expect([refused.status, refused.body.error.code]).toEqual([400, 'MODEL_NOT_DOWNLOADABLE']);
    expect(hf.requests.slice(hfBefore).some((r) => r.headers.authorization)).toBe(false);

    const ok = await call(gw, 'POST', '/api/download-models', { models }, alice);
    expect(ok.status).toBe(202);
    await waitFor(async () => (await poll(alice, models)).body.models['checkpoints/g.safetensors'].state === 'available');
    const tok = JSON.parse(fs.readFileSync(tokenFile(gw, 'alice'), 'utf8')).access_token;
    const resolves = hf.requests.filter((r) => r.server === 'hf' && r.url.includes('/resolve/') && r.method === 'GET');
    expect(resolves.length).toBeGreaterThan(0);
    expect(resolves.every((r) => r.headers.authorization === `Bearer ${tok}`)).toBe(true);
    // the CDN hop never sees the token
    expect(hf.requests.filter((r) => r.server === 'cdn').every((r) => r.headers.authorization === undefined)).toBe(true);
    expect(hf.requests.filter((r) => r.server === 'cdn').length).toBeGreaterThan(0);

    // a repo alice has not been granted stays closed to her
    const other = hf.addFile('meta/other-gated', 'o.safetensors', crypto.randomBytes(10), { gated: true });
    hf.setAccess('meta/other-gated', 'hf-alice', false);
    expect((await poll(alice, { 'loras/o.safetensors': other.url })).body.models['loras/o.safetensors'].is_hf_downloadable).toBe(false);
  });

  test('no permission: polling yes, starting and cancelling 403 FORBIDDEN with nothing fetched', async () => {
    const pub = hf.addFile('org/pub', 'p.safetensors', crypto.randomBytes(100));
    expect((await poll(carol, { 'checkpoints/p.safetensors': pub.url })).status).toBe(200);
    const before = hf.requests.length;
    const d = await call(gw, 'POST', '/api/download-models', { models: { 'checkpoints/p.safetensors': pub.url } }, carol);
    expect([d.status, d.body.error.code]).toEqual([403, 'FORBIDDEN']);
    const c = await call(gw, 'POST', '/api/cancel-model-download-session', { model_id: 'checkpoints/p.safetensors' }, carol);
    expect([c.status, c.body.error.code]).toEqual([403, 'FORBIDDEN']);
    expect(hf.requests.length).toBe(before);
    expect((await poll(carol, { 'checkpoints/p.safetensors': pub.url })).body.models['checkpoints/p.safetensors'].state).toBe('missing');
  });

  test("refresh 60 s before expiry with the refresh token; logout removes only the caller's token", async () => {
    hf.tokenTtlSec = 30; // already inside the 60 s window: the next use must refresh
    hf.oauthUser = 'hf-bob';
    const { callback } = await hfLogin(gw, bob);
    expect(callback.status).toBe(200);
    const file = tokenFile(gw, 'bob');
    const first = JSON.parse(fs.readFileSync(file, 'utf8')).access_token;
    hf.tokenTtlSec = 3600;
    const r = await poll(bob, { 'checkpoints/g2.safetensors': gated.url });
    expect(r.body.models['checkpoints/g2.safetensors'].is_hf_downloadable).toBe(true);
    expect(hf.tokenRequests.filter((t) => t.grant_type === 'refresh_token').length).toBe(1);
    const second = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(second.access_token).not.toBe(first);
    expect(second.expires_at).toBeGreaterThan(Date.now() / 1000 + 3000);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect((await call(gw, 'GET', '/api/hf-auth-token-status', undefined, bob)).body).toEqual({
      token_available: true,
      username: 'hf-bob',
    });

    const out = await call(gw, 'POST', '/api/hf-auth-logout', {}, bob);
    expect([out.status, out.body]).toEqual([200, { logged_out: true }]);
    expect(fs.existsSync(file)).toBe(false);
    expect(fs.existsSync(tokenFile(gw, 'alice'))).toBe(true);
    expect((await call(gw, 'GET', '/api/hf-auth-token-status', undefined, alice)).body.token_available).toBe(true);
    expect(
      (await poll(bob, { 'checkpoints/g2.safetensors': gated.url })).body.models['checkpoints/g2.safetensors'].is_hf_downloadable,
    ).toBe(false);
    // idempotent, also for someone who never logged in
    expect((await call(gw, 'POST', '/api/hf-auth-logout', {}, bob)).body).toEqual({ logged_out: true });
    expect((await call(gw, 'POST', '/api/hf-auth-logout', undefined, carol)).body).toEqual({ logged_out: true });
  });

  test('no HF token ever reached a client or the log', async () => {
    const files = fs.readdirSync(path.join(gw.config.paths.dataDir, 'hf_tokens')).filter((n) => n.endsWith('.json'));
    const secrets = files.flatMap((n) => {
      const t = JSON.parse(fs.readFileSync(path.join(gw.config.paths.dataDir, 'hf_tokens', n), 'utf8'));
      return [t.access_token, t.refresh_token].filter(Boolean);
    });
    expect(secrets.length).toBeGreaterThan(0);
    const logText = JSON.stringify(await flushedLogs(gw));
    for (const s of secrets) {
      expect(seen.some((t) => t.includes(s))).toBe(false);
      expect(logText.includes(s)).toBe(false);
    }
  });
});

describe('gateway-routed callback (hf_oauth.redirect_uri)', () => {
  test("the callback needs the same user's session; eligibility no longer needs loopback", async () => {
    const gw = await bootGateway({}, { redirect_uri: 'https://gateway.example/api/auth/huggingface/callback' });
    try {
      const dave = await userWith(gw, 'dave', ['download_models']);
      const erin = await userWith(gw, 'erin', ['download_models']);
      const fwd = { 'x-forwarded-for': '198.51.100.7' };
      const st = await call(gw, 'POST', '/api/models-availability-status', { models: {} }, { ...dave, ...fwd });
      expect(st.body.hf_auth).toEqual({ token_available: false, eligible: true });
      const s = await call(gw, 'POST', '/api/hf-auth-login-start', {}, { ...dave, ...fwd });
      expect(s.status).toBe(200);
      expect(new URL(s.body.authorize_url).searchParams.get('redirect_uri')).toBe('https://gateway.example/api/auth/huggingface/callback');
      const loc = new URL(await hf.authorize(s.body.authorize_url));
      const here = `${gw.url}${loc.pathname}${loc.search}`;
      const tokenCalls = hf.tokenRequests.length;

      const anon = await fetch(here, { redirect: 'manual' });
      expect(anon.status).toBe(401);
      const other = await fetch(here, { headers: erin });
      expect(other.status).toBe(403);
      const forged = await fetch(`${gw.url}${loc.pathname}?code=x&state=${'B'.repeat(43)}`, { headers: dave });
      expect(forged.status).toBe(400);
      expect(hf.tokenRequests.length).toBe(tokenCalls);

      const ok = await fetch(here, { headers: dave });
      expect(ok.status).toBe(200);
      expect(hf.tokenRequests.length).toBe(tokenCalls + 1);
      expect((await call(gw, 'GET', '/api/hf-auth-token-status', undefined, dave)).body.token_available).toBe(true);
      expect((await call(gw, 'GET', '/api/hf-auth-token-status', undefined, erin)).body.token_available).toBe(false);
    } finally {
      await gw.close();
    }
  });
});

describe('configuration', () => {
  test('no client_id → 503 HF_AUTH_NOT_CONFIGURED, and not eligible', async () => {
    const gw = await bootGateway({}, { client_id: null });
    try {
      const r = await call(gw, 'POST', '/api/hf-auth-login-start', {}, KEY);
      expect([r.status, r.body.error.code]).toEqual([503, 'HF_AUTH_NOT_CONFIGURED']);
      expect((await call(gw, 'POST', '/api/models-availability-status', { models: {} }, KEY)).body.hf_auth.eligible).toBe(false);
    } finally {
      await gw.close();
    }
  });

  test('a callback port in use → 503 HF_AUTH_START_FAILED, and the next attempt is not stuck', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const port = (blocker.address() as net.AddressInfo).port;
    const gw = await bootGateway({}, { callback_port: port });
    try {
      for (let i = 0; i < 2; i++) {
        const r = await call(gw, 'POST', '/api/hf-auth-login-start', {}, KEY);
        expect([r.status, r.body.error.code]).toEqual([503, 'HF_AUTH_START_FAILED']);
      }
    } finally {
      await gw.close();
      blocker.close();
    }
  });

  test('allowed_roles grants download_models to a whole role', async () => {
    const gw = await bootGateway({
      model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost], allowed_roles: ['admin', 'user'] },
    });
    try {
      const frank = await userWith(gw, 'frank', []);
      const pub = hf.addFile('org/roles', 'r.safetensors', crypto.randomBytes(100));
      const r = await call(gw, 'POST', '/api/download-models', { models: { 'checkpoints/r.safetensors': pub.url } }, frank);
      expect(r.status).toBe(202);
      const logs = await waitFor(async () => {
        const l = await flushedLogs(gw);
        return l.some((x) => x.event === 'model_download_finish') ? l : null;
      });
      expect(logs.find((x) => x.event === 'model_download_finish')!.user).toBe('frank');
    } finally {
      await gw.close();
    }
  });
});

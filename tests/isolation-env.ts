/** Shared set-up of the isolation tests: a fake ComfyUI, a real gateway in front of it, and two ordinary users. */
import crypto from 'node:crypto';
import http from 'node:http';
import request from 'supertest';
import { PW, login } from './helpers/auth';
import { startFakeComfy, type FakeComfy, type FakeComfyOptions } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { openSocket, type TestSocket } from './helpers/ws';

/** One signed-in caller: the headers that authenticate it. */
export interface Caller {
  name: string;
  headers: Record<string, string>;
}

/** A running gateway + fake ComfyUI with alice, bob (users) and the static key (admin `api-key`). */
export interface IsolationEnv {
  fake: FakeComfy;
  gw: TestGateway;
  alice: Caller;
  bob: Caller;
  admin: Caller;
  close(): Promise<void>;
}

/** Creates a user through the admin API and signs them in. */
export async function addUser(gw: TestGateway, name: string, role: 'user' | 'admin' = 'user'): Promise<Caller> {
  const r = await request(gw.url).post('/gateway/api/users').set('X-API-Key', TEST_KEY).send({ username: name, password: PW, role });
  // 409: an account a test seeded in users_db.json (with password PW) before the gateway started
  if (r.status !== 201 && r.status !== 200 && r.status !== 409) throw new Error(`create ${name}: ${r.status} ${JSON.stringify(r.body)}`);
  const { token } = await login(gw, name);
  return { name, headers: { Authorization: `Bearer ${token}` } };
}

/** Starts the environment (`config` overrides the gateway's config.json). */
export async function startIsolationEnv(
  opts: { config?: Record<string, unknown>; fake?: FakeComfyOptions; fakeInstance?: FakeComfy } = {},
): Promise<IsolationEnv> {
  const fake = opts.fakeInstance ?? (await startFakeComfy({ promptDelayMs: 60, ...opts.fake }));
  const gw = await startGateway({ api_key: TEST_KEY, upstream: fake.url, model_downloads: { enabled: false }, ...opts.config });
  const alice = await addUser(gw, 'alice');
  const bob = await addUser(gw, 'bob');
  return {
    fake,
    gw,
    alice,
    bob,
    admin: { name: 'api-key', headers: { 'X-API-Key': TEST_KEY } },
    async close() {
      await gw.close();
      if (!opts.fakeInstance) await fake.close();
    },
  };
}

/** A raw HTTP request through the gateway: the path is sent exactly as written (no client-side normalisation). */
export function raw(
  gw: { port: number },
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; body?: Buffer | string } = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer; text: string; json(): any }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: gw.port, method, path, headers: opts.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body,
          text: body.toString('utf8'),
          json: () => JSON.parse(body.toString('utf8')),
        });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** JSON POST through the gateway. */
export function postJson(gw: { port: number }, path: string, caller: Caller, body: unknown) {
  return raw(gw, 'POST', path, { headers: { ...caller.headers, 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
}

/** Requests the fake received on paths matching `re` (method optional). */
export function received(fake: FakeComfy, re: RegExp, method?: string) {
  return fake.requests.filter((r) => re.test(r.rawPath) && (!method || r.method === method));
}

/** Opens a WebSocket through the gateway as `caller`, with an optional clientId. */
export function socket(gw: { url: string }, caller: Caller, clientId?: string, path = '/ws'): Promise<TestSocket> {
  const url = `${gw.url.replace(/^http/, 'ws')}${path}${clientId ? `?clientId=${encodeURIComponent(clientId)}` : ''}`;
  return openSocket(url, caller.headers);
}

/** A small multipart body (built in memory; for the streaming case see tests/helpers/multipart.ts). */
export function multipartBody(parts: { name: string; value?: string; filename?: string; data?: Buffer; headers?: string[] }[]) {
  const boundary = `----iso${crypto.randomBytes(6).toString('hex')}`;
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const disp = `Content-Disposition: form-data; name="${p.name}"${p.filename !== undefined ? `; filename="${p.filename}"` : ''}`;
    const extra = (p.headers ?? []).map((h) => `${h}\r\n`).join('');
    chunks.push(
      Buffer.from(`--${boundary}\r\n${disp}\r\n${p.filename !== undefined ? 'Content-Type: image/png\r\n' : ''}${extra}\r\n`, 'utf8'),
    );
    chunks.push(p.data ?? Buffer.from(p.value ?? '', 'utf8'));
    chunks.push(Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` };
}

/** Waits until `pred` holds (polling), or fails after `ms`. */
export async function until(pred: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export { TEST_KEY, PW };

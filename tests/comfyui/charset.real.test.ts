/**
 * Issue 9 (High) against REAL ComfyUI servers (7914c47 and 0.3.44): aiohttp really decodes upload fields through
 * `_charset_`, part charsets, transfer encodings and RFC 5987 names (shown by sending the old gateway's rewritten
 * bodies straight to ComfyUI), and through the gateway none of it reaches `input/alice/` or `output/alice/`.
 *
 * Self-contained (starts the server with the shared start.sh itself) so it runs before the conformance harness
 * (tests/comfyui/realComfy.ts) is merged; `COMFYUI_TEST_PORTS=lo-hi` limits the port it picks.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startGateway, TEST_KEY, type TestGateway } from '../helpers/gateway';
import { ALICE_PNG, ATTACKS, B, BOB_PNG, MASK_REF_UTF7, body, bodyForAiohttp314, field, file, listFiles } from '../helpers/uploadAttacks';
import { addUser, raw, type Caller } from '../isolation-env';

jest.setTimeout(240_000);

const REPO = path.resolve(__dirname, '..', '..');
const SERVERS =
  process.env.COMFYUI_SERVERS_DIR ??
  [path.resolve(REPO, '..', 'shared', 'comfyui'), path.resolve(REPO, '..', '..', 'shared', 'comfyui')].find((d) =>
    fs.existsSync(path.join(d, 'start.sh')),
  )!;

async function freePort(): Promise<number> {
  const tryPort = (p: number) =>
    new Promise<number | null>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(null));
      s.listen(p, '127.0.0.1', () => {
        const got = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(got));
      });
    });
  const range = process.env.COMFYUI_TEST_PORTS;
  if (!range) return (await tryPort(0))!;
  const [lo, hi] = range.split('-').map(Number);
  for (let p = lo; p <= (hi || lo); p++) {
    const got = await tryPort(p);
    if (got) return got;
  }
  throw new Error(`no free port in COMFYUI_TEST_PORTS=${range}`);
}

/** A real ComfyUI of `tree` with a fresh data dir, in its own process group. */
async function startComfy(tree: string): Promise<{ url: string; dataDir: string; stop(): Promise<void> }> {
  if (!SERVERS) throw new Error('no shared/comfyui/start.sh beside the clone (set COMFYUI_SERVERS_DIR)');
  const port = await freePort();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `cgw-charset-${tree}-`));
  const proc: ChildProcess = spawn('sh', [path.join(SERVERS, 'start.sh'), String(port), '--tree', tree], {
    env: { ...process.env, COMFY_DATA_DIR: dataDir },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      process.kill(-proc.pid!, 'SIGTERM');
      const t = setTimeout(() => process.kill(-proc.pid!, 'SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 200_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`ComfyUI ${tree} exited early:\n${out.slice(-3000)}`);
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`ComfyUI ${tree} did not answer:\n${out.slice(-3000)}`);
    }
    const ok = await fetch(`${url}/system_stats`, { signal: AbortSignal.timeout(2000) }).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return { url, dataDir, stop };
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe.each(['7914c47', '0.3.44'])('real ComfyUI %s: multipart charsets', (tree) => {
  let comfy: Awaited<ReturnType<typeof startComfy>>;
  let gw: TestGateway;
  let bob: Caller;
  const input = () => path.join(comfy.dataDir, 'input');
  const output = () => path.join(comfy.dataDir, 'output');
  const all = () => [...listFiles(input()).map((f) => `input/${f}`), ...listFiles(output()).map((f) => `output/${f}`)];
  const direct = (route: string, b: Buffer) =>
    raw({ port: Number(new URL(comfy.url).port) }, 'POST', route, {
      headers: { 'Content-Type': `multipart/form-data; boundary=${B}` },
      body: b,
    });
  const viaGateway = (route: string, b: Buffer) =>
    raw(gw, 'POST', route, { headers: { ...bob.headers, 'Content-Type': `multipart/form-data; boundary=${B}` }, body: b });

  beforeAll(async () => {
    comfy = await startComfy(tree);
    gw = await startGateway({
      upstream: comfy.url,
      api_key: TEST_KEY,
      model_downloads: { enabled: false },
      comfyui: { input_dir: input() },
    });
    await addUser(gw, 'alice');
    bob = await addUser(gw, 'bob');
  });
  afterAll(async () => {
    await gw?.close();
    await comfy?.stop();
  });
  beforeEach(() => {
    for (const dir of [path.join(input(), 'alice'), path.join(output(), 'alice')]) {
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'secret.png'), ALICE_PNG);
    }
  });

  it.each(ATTACKS)(
    'sent straight to ComfyUI as the old gateway forwarded it, %s overwrites alice’s file',
    async (_n, route, parts, target) => {
      const r = await direct(route.replace(/^\/api/, ''), bodyForAiohttp314(parts('bob/')));
      expect(r.status).toBe(200);
      const [area, ...rest] = target.split('/');
      expect(fs.readFileSync(path.join(area === 'output' ? output() : input(), ...rest))).toEqual(BOB_PNG);
    },
  );

  it.each(ATTACKS)(
    'through the gateway, %s (either framing) → 400 INVALID_BODY and alice’s files are untouched',
    async (_n, route, parts) => {
      const before = all();
      for (const b of [body(parts('')), bodyForAiohttp314(parts(''))]) {
        const r = await viaGateway(route, b);
        expect([r.status, r.json().error.code]).toEqual([400, 'INVALID_BODY']);
      }
      expect(all()).toEqual(before);
      expect(fs.readFileSync(path.join(input(), 'alice', 'secret.png'))).toEqual(ALICE_PNG);
      expect(fs.readFileSync(path.join(output(), 'alice', 'secret.png'))).toEqual(ALICE_PNG);
    },
  );

  it('the UTF-7 mask reference that names alice’s image after decoding is refused; a plain upload still lands in input/bob/', async () => {
    const before = all();
    const mask = [field('_charset_', 'utf-7'), file('image', 'mask.png'), field('original_ref', MASK_REF_UTF7), field('type', 'input')];
    for (const b of [body(mask), bodyForAiohttp314(mask)]) {
      const m = await viaGateway('/upload/mask', b);
      expect([m.status, m.json().error.code]).toEqual([400, 'INVALID_BODY']);
    }
    expect(all()).toEqual(before);
    const ok = await viaGateway(
      '/api/upload/image',
      body([
        file('image', 'mine.png'),
        field('subfolder', 'pets', ['Content-Type: text/plain; charset=utf-8']),
        field('overwrite', 'true'),
      ]),
    );
    expect([ok.status, ok.json()]).toEqual([200, { name: 'mine.png', subfolder: 'bob/pets', type: 'input' }]);
    expect(fs.readFileSync(path.join(input(), 'bob', 'pets', 'mine.png'))).toEqual(BOB_PNG);
  });
});

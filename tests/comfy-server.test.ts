/**
 * Issue 10 items 2-3 in the fast suite: the gateway learns the server (one log line, again on reconnect), warns when
 * ComfyUI is reachable around it, and lists users' uploads in LoadImage on servers that do not say where input/ is.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sampleWorkflow } from './helpers/fakeComfy';
import { flushedLogs, type TestGateway } from './helpers/gateway';
import { raw, startIsolationEnv, type Caller, type IsolationEnv } from './isolation-env';

const serverLines = async (gw: TestGateway) => (await flushedLogs(gw)).filter((l) => String(l.msg).startsWith('ComfyUI at '));
const exposureWarnings = async (gw: TestGateway) => (await flushedLogs(gw)).filter((l) => String(l.msg).includes('bypasses the gateway'));

async function uploadPng(env: IsolationEnv, who: Caller, name: string) {
  const boundary = 'b0undary';
  const body = Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="${name}"\r\nContent-Type: image/png\r\n\r\n`),
    Buffer.from('\x89PNG\r\n\x1a\n'),
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
  return raw(env.gw, 'POST', '/upload/image', {
    headers: { ...who.headers, 'Content-Type': `multipart/form-data; boundary=${boundary}` },
    body,
  });
}
const loadImageOptions = async (env: IsolationEnv, who: Caller) =>
  (await raw(env.gw, 'GET', '/object_info/LoadImage', { headers: who.headers })).json().LoadImage.input.required.image[0] as string[];

describe('a current server (version, argv, /internal/folder_paths, --multi-user)', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv();
  });
  afterAll(() => env.close());

  test('one line at start names what the gateway learned', async () => {
    const lines = await serverLines(env.gw);
    expect(lines).toHaveLength(1);
    const msg = String(lines[0].msg);
    expect(msg).toContain('version 0.3.0');
    expect(msg).toContain('multi-user on');
    expect(msg).toContain('/internal/folder_paths present');
    expect(msg).toContain('client prompt_id learned from the first prompt');
    expect(msg).toContain(`input folder ${env.fake.inputDir} (from folder_paths)`);
    expect(await exposureWarnings(env.gw)).toEqual([]); // the fake listens on 127.0.0.1 like start.sh
  });

  test('after ComfyUI comes back the gateway learns it again and says so once more', async () => {
    await env.fake.stop();
    const down = await raw(env.gw, 'GET', '/queue', { headers: env.alice.headers });
    expect(down.status).toBe(502);
    await env.fake.start();
    const deadline = Date.now() + 10_000;
    while ((await serverLines(env.gw)).length < 2 && Date.now() < deadline) {
      await raw(env.gw, 'GET', '/queue', { headers: env.alice.headers });
      await new Promise((r) => setTimeout(r, 100));
    }
    expect((await serverLines(env.gw)).length).toBe(2);
  });

  test('the first prompt answer tells whether ComfyUI honours our prompt_id (this one does: no warning)', async () => {
    const r = await raw(env.gw, 'POST', '/prompt', {
      headers: { ...env.alice.headers, 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: sampleWorkflow('honoured') }),
    });
    expect(r.status).toBe(200);
    expect(env.fake.prompts.has(r.json().prompt_id)).toBe(true);
    const logs = await flushedLogs(env.gw);
    expect(logs.some((l) => l.msg === 'ComfyUI honours the prompt_id the gateway sends')).toBe(true);
    expect(logs.some((l) => String(l.msg).includes('ignores the prompt_id'))).toBe(false);
  });
});

describe.each([
  [['main.py', '--listen', '0.0.0.0'], ['0.0.0.0']],
  [['main.py', '--listen', '127.0.0.1,192.0.2.7'], ['192.0.2.7']],
  [['main.py', '--listen', '0.0.0.0', '--listen', '127.0.0.1'], []],
  [['main.py', '--listen=::'], ['::']],
  [['main.py'], []],
  [
    ['main.py', '--listen', '--multi-user'],
    ['0.0.0.0', '::'],
  ],
])('argv %j', (argv, exposed) => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({ fake: { argv } });
  });
  afterAll(() => env.close());
  test(`warns about ${JSON.stringify(exposed)}`, async () => {
    const warn = await exposureWarnings(env.gw);
    expect(warn.map((w) => w.exposedOn)).toEqual(exposed.length ? [exposed] : []);
    if (exposed.length) expect(warn[0].level).toBe(40);
  });
});

describe('the input folder from argv (--input-directory) beats the guess next to models/', () => {
  let env: IsolationEnv;
  let dir: string;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'argv-input-'));
    env = await startIsolationEnv({ fake: { argv: ['main.py', '--input-directory', dir] } });
  });
  afterAll(async () => {
    await env.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  test("named in the line, and files there show in the owner's list", async () => {
    expect(String((await serverLines(env.gw))[0].msg)).toContain(`input folder ${dir} (from argv)`);
    fs.mkdirSync(path.join(dir, 'alice'));
    fs.writeFileSync(path.join(dir, 'alice', 'there.png'), 'x');
    expect(await loadImageOptions(env, env.alice)).toContain('alice/there.png');
    expect(await loadImageOptions(env, env.bob)).not.toContain('alice/there.png');
  });
});

describe('an old server that reports neither argv nor /internal (like 7914c47)', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({ fake: { legacy: true } });
  });
  afterAll(() => env.close());

  test('the line says what is unknown', async () => {
    const msg = String((await serverLines(env.gw))[0].msg);
    expect(msg).toContain('version unknown');
    expect(msg).toContain('/internal/folder_paths absent');
    expect(msg).toContain('input folder unknown');
    expect(await exposureWarnings(env.gw)).toEqual([]);
  });

  test("uploads appear in their owner's LoadImage list (from the gateway's record), in nobody else's", async () => {
    const r = await uploadPng(env, env.alice, 'mine.png');
    expect(r.status).toBe(200);
    expect(r.json().subfolder).toBe('alice');
    expect(await loadImageOptions(env, env.alice)).toContain('alice/mine.png');
    expect((await loadImageOptions(env, env.bob)).some((o) => o.includes('mine.png'))).toBe(false);
    // a refused upload records nothing
    const bad = await raw(env.gw, 'POST', '/upload/image', {
      headers: { ...env.bob.headers, 'Content-Type': 'multipart/form-data; boundary=x' },
      body: 'garbage',
    });
    expect(bad.status).toBeGreaterThanOrEqual(400);
    expect(await loadImageOptions(env, env.bob)).toEqual((await loadImageOptions(env, env.bob)).filter((o) => o.startsWith('bob/')));
  });
});

/**
 * Issue 6: no partial file is ever under its final name — not even after `kill -9` mid-download — and the
 * orphaned temp file is swept when the gateway starts again.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startGateway, TEST_KEY } from './helpers/gateway';
import { callApi, startFakeHf, waitFor, type FakeHf } from './helpers/fakeHf';

const ROOT = path.resolve(__dirname, '..');
const KEY = { 'x-api-key': TEST_KEY };

let hf: FakeHf;
let dir: string;

beforeAll(async () => {
  hf = await startFakeHf();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-crash-'));
});

afterAll(async () => {
  await hf?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('kill -9 mid-download leaves only a temp file, which the next start sweeps', async () => {
  const modelsDir = path.join(dir, 'models');
  fs.mkdirSync(path.join(modelsDir, 'checkpoints'), { recursive: true });
  const bytes = crypto.randomBytes(3_000_000);
  const f = hf.addFile('org/crash', 'big.safetensors', bytes, { throttleBytesPerSec: 1_000_000 });
  const config = {
    host: '127.0.0.1',
    port: 0,
    data_dir: './data',
    api_key: TEST_KEY,
    upstream: 'http://127.0.0.1:9',
    log_levels: ['warn'],
    comfyui: { models_dir: modelsDir },
    model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost] },
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));

  // The real entry point, as its own process (TypeScript transpiled on load, like `npm start` minus the build).
  const proc = spawn(process.execPath, ['-r', path.join(ROOT, 'tests/helpers/tsRequire.js'), path.join(ROOT, 'gateway/main.ts'), '--config', path.join(dir, 'config.json')], {
    cwd: dir,
    env: { PATH: process.env.PATH, HF_ENDPOINT: hf.url },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<NodeJS.Signals | null>((r) => proc.on('exit', (_c, sig) => r(sig)));
  try {
    const url = await waitFor(() => /listening on (http:\/\/[^\s]+)/.exec(err)?.[1], 20_000);
    const r = await callApi(url, 'POST', '/api/download-models', { models: { 'checkpoints/big.safetensors': f.url } }, KEY);
    expect(r.status).toBe(202);
    const tmp = await waitFor(() => {
      const t = fs.readdirSync(path.join(modelsDir, 'checkpoints')).find((n) => n.endsWith('.tmp'));
      return t && fs.statSync(path.join(modelsDir, 'checkpoints', t)).size > 200_000 ? t : null;
    });
    expect(tmp).toMatch(/^big\.safetensors\.\d+\.tmp$/);
    proc.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    expect(fs.readdirSync(path.join(modelsDir, 'checkpoints'))).toEqual([tmp]);
    expect(fs.statSync(path.join(modelsDir, 'checkpoints', tmp)).size).toBeLessThan(bytes.length);
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  }

  // Next start: the orphan goes before anything else runs; the model is then downloadable again.
  const gw = await startGateway({ ...config, port: 0 }, { env: { HF_ENDPOINT: hf.url } });
  try {
    expect(fs.readdirSync(path.join(modelsDir, 'checkpoints'))).toEqual([]);
    const st = await callApi(gw.url, 'POST', '/api/models-availability-status', { models: { 'checkpoints/big.safetensors': f.url } }, KEY);
    expect(st.body.models['checkpoints/big.safetensors'].state).toBe('missing');
  } finally {
    await gw.close();
  }
});

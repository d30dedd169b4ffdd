/**
 * Issue 6: no partial file is ever under its final name — not even after `kill -9` mid-download — and the
 * orphaned temp file is swept when the gateway starts again.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MAIN_JS } from './helpers/child';
import { startGateway, TEST_KEY } from './helpers/gateway';
import { callApi, startFakeHf, waitFor, type FakeHf } from './helpers/fakeHf';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { clientTraffic } from './helpers/traffic';

const KEY = { 'x-api-key': TEST_KEY };

let hf: FakeHf;
let comfy: FakeComfy;
const dirs: string[] = [];

beforeAll(async () => {
  hf = await startFakeHf();
  comfy = await startFakeComfy();
});

afterAll(async () => {
  await hf?.close();
  await comfy?.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

test.each(['comfyui.models_dir', "ComfyUI's folder paths"])(
  'kill -9 mid-download leaves only a temp file, which the next start sweeps (folders from %s)',
  async (mode) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-crash-'));
    dirs.push(dir);
    const fromConfig = mode === 'comfyui.models_dir';
    const modelsDir = fromConfig ? path.join(dir, 'models') : comfy.modelsDir;
    fs.mkdirSync(path.join(modelsDir, 'checkpoints'), { recursive: true });
    const bytes = crypto.randomBytes(3_000_000);
    const name = `big-${fromConfig ? 'a' : 'b'}.safetensors`;
    const f = hf.addFile('org/crash', name, bytes, { throttleBytesPerSec: 1_000_000 });
    const config = {
      host: '127.0.0.1',
      port: 0,
      data_dir: './data',
      api_key: TEST_KEY,
      upstream: fromConfig ? 'http://127.0.0.1:9' : comfy.url,
      log_levels: ['warn'],
      ...(fromConfig ? { comfyui: { models_dir: modelsDir } } : {}),
      model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost] },
    };
    const ours = () => fs.readdirSync(path.join(modelsDir, 'checkpoints')).filter((n) => n.startsWith(name));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));

    // The real, built entry point as its own process (npm test builds dist/ first).
    const proc = spawn(process.execPath, [MAIN_JS, '--config', path.join(dir, 'config.json')], {
      cwd: dir,
      env: { PATH: process.env.PATH, HF_ENDPOINT: hf.url },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    proc.stderr!.on('data', (d) => (err += d));
    const exited = new Promise<NodeJS.Signals | null>((r) => proc.on('exit', (_c, sig) => r(sig)));
    try {
      const url = await waitFor(() => /listening on (http:\/\/[^\s]+)/.exec(err)?.[1], 20_000);
      const r = await callApi(url, 'POST', '/api/download-models', { models: { [`checkpoints/${name}`]: f.url } }, KEY);
      expect(r.status).toBe(202);
      const tmp = await waitFor(() => {
        const t = ours().find((n) => n.endsWith('.tmp'));
        return t && fs.statSync(path.join(modelsDir, 'checkpoints', t)).size > 200_000 ? t : null;
      });
      expect(tmp).toMatch(new RegExp(`^${name.replace('.', '\\.')}\\.\\d+\\.tmp$`));
      proc.kill('SIGKILL');
      expect(await exited).toBe('SIGKILL');
      expect(ours()).toEqual([tmp]);
      expect(fs.statSync(path.join(modelsDir, 'checkpoints', tmp)).size).toBeLessThan(bytes.length);
    } finally {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    }

    // Next start (same data dir): the orphan goes before anything else runs, without asking ComfyUI anything.
    comfy.clearRequests();
    const gw = await startGateway({ ...config, data_dir: path.join(dir, 'data') }, { env: { HF_ENDPOINT: hf.url } });
    try {
      expect(ours()).toEqual([]);
      expect(clientTraffic(comfy)).toHaveLength(0); // only the gateway's own discovery calls
      const st = await callApi(gw.url, 'POST', '/api/models-availability-status', { models: { [`checkpoints/${name}`]: f.url } }, KEY);
      expect(st.body.models[`checkpoints/${name}`].state).toBe('missing');
      hf.addFile('org/crash', name, bytes); // same file, now served at full speed
      expect(await callApi(gw.url, 'POST', '/api/download-models', { models: { [`checkpoints/${name}`]: f.url } }, KEY)).toMatchObject({
        status: 202,
      });
      await waitFor(() => ours().length === 1 && ours()[0] === name, 15_000);
      expect(fs.readFileSync(path.join(modelsDir, 'checkpoints', name)).equals(bytes)).toBe(true);
    } finally {
      await gw.close();
    }
  },
);

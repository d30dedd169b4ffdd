/* Isolation benchmark (issue 5): WS messages/s through the isolating relay vs direct, and GET /history p99 with
 * 10,000 entries of which 100 are the caller's. Gateway, fake upstream and client each run in their own process. */
import { fork, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import { spawnBenchGateway } from './gateway';
import { runAsScript } from './util';

const KEY = 'bench-isolation-key-0123456789abcdef';
const ENTRIES = 10_000;
const MINE = 100;
const WS_COUNT = Number(process.env.BENCH_WS_COUNT ?? 50_000);
const HISTORY_REQUESTS = Number(process.env.BENCH_HISTORY_REQUESTS ?? 200);
const WS_ROUNDS = Number(process.env.BENCH_WS_ROUNDS ?? 5);

/** Python's json.dumps separators, as ComfyUI answers. */
const py = (v: unknown) => JSON.stringify(v).replace(/","/g, '", "').replace(/":/g, '": ');

function historyEntry(id: string, n: number) {
  const prompt = {
    '3': {
      class_type: 'KSampler',
      inputs: {
        seed: n,
        steps: 20,
        cfg: 7,
        sampler_name: 'euler',
        scheduler: 'normal',
        denoise: 1,
        model: ['4', 0],
        positive: ['6', 0],
        negative: ['7', 0],
        latent_image: ['5', 0],
      },
    },
    '4': { class_type: 'CheckpointLoaderSimple', inputs: { ckpt_name: 'v1-5-pruned-emaonly.safetensors' } },
    '5': { class_type: 'EmptyLatentImage', inputs: { width: 512, height: 512, batch_size: 1 } },
    '6': { class_type: 'CLIPTextEncode', inputs: { text: `a photo of a cat number ${n}`, clip: ['4', 1] } },
    '7': { class_type: 'CLIPTextEncode', inputs: { text: 'blurry', clip: ['4', 1] } },
    '8': { class_type: 'VAEDecode', inputs: { samples: ['3', 0], vae: ['4', 2] } },
    '9': { class_type: 'SaveImage', inputs: { filename_prefix: 'user/ComfyUI', images: ['8', 0] } },
  };
  const t = 1_700_000_000_000 + n;
  return {
    prompt: [n, id, prompt, { client_id: 'c'.repeat(32), create_time: t }, ['9']],
    outputs: { '9': { images: [{ filename: `ComfyUI_${String(n).padStart(5, '0')}_.png`, subfolder: 'user', type: 'output' }] } },
    status: {
      status_str: 'success',
      completed: true,
      messages: [
        ['execution_start', { prompt_id: id, timestamp: t }],
        ['execution_cached', { nodes: [], prompt_id: id, timestamp: t }],
        ['execution_success', { prompt_id: id, timestamp: t + 900 }],
      ],
    },
    meta: { '9': { node_id: '9', display_node: '9', parent_node: null, real_node_id: '9' } },
  };
}

/* ───────────── the fake upstream (child process) ───────────── */

function runStub(ids: string[]): void {
  const history: Record<string, unknown> = {};
  ids.forEach((id, i) => (history[id] = historyEntry(id, i)));
  const historyBody = Buffer.from(py(history));
  const users: Record<string, string> = {};
  const json = (res: http.ServerResponse, body: Buffer | string, status = 200) => {
    res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const p = (req.url ?? '/').split('?')[0].replace(/^\/api(?=\/)/, '');
      if (p === '/users' && req.method === 'GET') return json(res, py({ storage: 'server', users }));
      if (p === '/users' && req.method === 'POST') {
        const name = JSON.parse(Buffer.concat(chunks).toString()).username as string;
        const id = `${name}_${crypto.randomUUID()}`;
        users[id] = name;
        return json(res, py(id));
      }
      if (p === '/queue') return json(res, py({ queue_running: [], queue_pending: [] }));
      if (p === '/prompt') return json(res, py({ exec_info: { queue_remaining: 0 } }));
      if (p === '/history') return json(res, historyBody);
      if (p.startsWith('/history/')) {
        const id = decodeURIComponent(p.slice('/history/'.length));
        return json(res, py(history[id] ? { [id]: history[id] } : {}));
      }
      json(res, '404: Not Found', 404);
    });
  });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  server.on('upgrade', (req, socket, head) => {
    const sid = new URL(req.url ?? '/', 'http://x').searchParams.get('clientId') ?? crypto.randomUUID().replace(/-/g, '');
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send(py({ type: 'status', data: { status: { exec_info: { queue_remaining: 0 } }, sid } }));
      ws.on('message', (d) => {
        const [cmd, n, pid] = d.toString().split(':');
        if (cmd !== 'blast') return;
        for (let i = 0; i < Number(n); i++)
          ws.send(py({ type: 'progress', data: { value: i, max: Number(n), prompt_id: pid, node: '3' } }));
      });
    });
  });
  server.listen(0, '127.0.0.1', () => process.send!({ url: `http://127.0.0.1:${(server.address() as { port: number }).port}` }));
}

/* ───────────── the driver ───────────── */

function startGateway(upstream: string, dir: string): Promise<{ proc: ChildProcess; url: string }> {
  return spawnBenchGateway({
    dir,
    config: { bcrypt_cost: 4, model_downloads: { enabled: false } },
    args: ['--upstream', upstream, '--api-key', KEY],
  });
}

function call(url: string, method: string, headers: Record<string, string>, body?: string): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = http.request(
      {
        hostname: u.hostname,
        port: u.port,
        path: u.pathname + u.search,
        method,
        headers: { ...headers, ...(body ? { 'Content-Type': 'application/json' } : {}) },
        agent: keepAlive,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });

async function wsRate(url: string, headers: Record<string, string>, promptId: string): Promise<number> {
  const ws = new WebSocket(url, { headers, perMessageDeflate: false });
  await new Promise((r, j) => {
    ws.once('message', r); // the status frame: the relay is fully up
    ws.once('error', j);
  });
  let got = 0;
  const done = new Promise<void>((resolve) =>
    ws.on('message', () => {
      if (++got >= WS_COUNT) resolve();
    }),
  );
  const t0 = process.hrtime.bigint();
  ws.send(`blast:${WS_COUNT}:${promptId}`);
  await Promise.race([done, new Promise((r) => setTimeout(r, 60_000))]);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  ws.close();
  return got / secs;
}

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];

/** Runs the isolation benchmark and returns its numbers (called by bench/run.ts). */
export async function benchIsolation(): Promise<Record<string, unknown>> {
  const ids = Array.from({ length: ENTRIES }, () => crypto.randomUUID());
  const mine = new Set(ids.filter((_, i) => i % (ENTRIES / MINE) === 0));
  const stub = fork(__filename, [], { env: { ...process.env, ISOLATION_BENCH_STUB: '1' }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const stubUrl = await new Promise<string>((r) => {
    stub.once('message', (m) => r((m as { url: string }).url));
    stub.send({ cmd: 'ids', ids });
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-iso-'));
  fs.mkdirSync(path.join(dir, 'data'));
  // alice first, so the ledger can name her account id (owners are account ids, not names).
  const first = await startGateway(stubUrl, dir);
  const created = await call(
    `${first.url}/gateway/api/users`,
    'POST',
    { 'X-API-Key': KEY },
    JSON.stringify({ username: 'alice', password: 'bench-password-1', role: 'user' }),
  );
  await new Promise<void>((r) => {
    first.proc.once('exit', () => r());
    first.proc.kill('SIGTERM');
  });
  if (created.status >= 300) throw new Error(`create user: ${created.status} ${created.body}`);
  const db = JSON.parse(fs.readFileSync(path.join(dir, 'data', 'users_db.json'), 'utf8')) as { users: { username: string; id: string }[] };
  const aliceId = db.users.find((u) => u.username === 'alice')!.id;
  // The ledger as if the gateway had queued all 10,000 prompts: 100 of them alice's.
  const rows = ids.map((id, i) => [id, mine.has(id) ? aliceId : 'bob', 1_700_000_000_000 + i, '', 'c'.repeat(32), []]);
  fs.writeFileSync(path.join(dir, 'data', 'prompt_ledger.json'), JSON.stringify({ version: 1, prompts: rows }), { mode: 0o600 });
  const gw = await startGateway(stubUrl, dir);
  try {
    const login = await call(`${gw.url}/login`, 'POST', {}, JSON.stringify({ username: 'alice', password: 'bench-password-1' }));
    const auth = { Authorization: `Bearer ${JSON.parse(login.body.toString()).token}` };
    const alicePrompt = [...mine][0];

    const wsUrl = (base: string) => `${base.replace(/^http/, 'ws')}/ws?clientId=bench`;
    await wsRate(wsUrl(stubUrl), {}, alicePrompt); // warm-up both paths
    await wsRate(wsUrl(gw.url), auth, alicePrompt);
    // Interleaved rounds, median of each: a shared machine's noise hits both paths alike.
    const directs: number[] = [];
    const relays: number[] = [];
    for (let i = 0; i < WS_ROUNDS; i++) {
      directs.push(await wsRate(wsUrl(stubUrl), {}, alicePrompt));
      relays.push(await wsRate(wsUrl(gw.url), auth, alicePrompt));
    }
    const direct = pct(directs, 50);
    const relayed = pct(relays, 50);
    if (!(relayed > 0)) throw new Error("the isolating relay passed none of the caller's own progress frames");

    const times: number[] = [];
    let count = 0;
    for (let i = 0; i < HISTORY_REQUESTS + 20; i++) {
      const t0 = process.hrtime.bigint();
      const r = await call(`${gw.url}/api/history`, 'GET', auth);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.status !== 200) throw new Error(`GET /history: ${r.status}`);
      count = Object.keys(JSON.parse(r.body.toString())).length;
      if (count !== MINE) throw new Error(`GET /history showed ${count} entries, not the caller's ${MINE}`);
      if (i >= 20) times.push(ms);
    }
    return {
      websocket: {
        messages: WS_COUNT,
        rounds: WS_ROUNDS,
        direct_msgs_per_s: Math.round(direct),
        isolating_relay_msgs_per_s: Math.round(relayed),
        ratio: +(relayed / direct).toFixed(2),
        target: '≥ 0.65',
      },
      history: {
        entries: ENTRIES,
        callers_entries: count,
        p50_ms: +pct(times, 50).toFixed(1),
        p99_ms: +pct(times, 99).toFixed(1),
        target: 'p99 < 50 ms',
      },
    };
  } finally {
    gw.proc.kill('SIGTERM');
    stub.send({ cmd: 'exit' });
    keepAlive.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.env.ISOLATION_BENCH_STUB) {
  process.on('message', (m: { cmd: string; ids?: string[] }) => {
    if (m.cmd === 'ids') runStub(m.ids!);
    if (m.cmd === 'exit') process.exit(0);
  });
} else if (require.main === module) {
  runAsScript(benchIsolation);
}

/* Queue benchmark (issue 12): fairness of the gateway's queue (3 users × 20 prompts queued at once on one worker:
 * the longest wait of a user's first prompt, in prompt durations, fair vs fifo), throughput of 2 workers vs 1, and
 * POST /prompt latency with the queue. The gateway runs as its own process; the fake workers run in this one. */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from '../tests/helpers/fakeComfy';
import { spawnBenchGateway } from './gateway';

const KEY = 'bench-queue-key-0123456789abcdef';
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function call(
  base: string,
  method: string,
  p: string,
  headers: Record<string, string>,
  body?: object,
): Promise<{ status: number; json: any; ms: number }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const data = body ? JSON.stringify(body) : undefined;
    const req = http.request(
      `${base}${p}`,
      { method, agent, headers: { ...headers, ...(data ? { 'content-type': 'application/json' } : {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let json: any = null;
          try {
            json = JSON.parse(Buffer.concat(chunks).toString());
          } catch {
            json = null;
          }
          resolve({ status: res.statusCode ?? 0, json, ms: Number(process.hrtime.bigint() - t0) / 1e6 });
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** A gateway in front of `fakes` with users u0…u(n-1); returns their bearer headers. */
async function stack(fakes: FakeComfy[], users: number, config: Record<string, unknown>) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-queue-'));
  const upstreams = fakes.map((f, i) => ({ url: f.url, name: `w${i + 1}` }));
  const gw = await spawnBenchGateway({
    dir,
    config: {
      api_key: KEY,
      bcrypt_cost: 4,
      model_downloads: { enabled: false },
      upstreams,
      ...(fakes.length > 1 ? { shared_input: fakes[0].inputDir } : {}),
      ...config,
    },
  });
  const admin = { 'X-API-Key': KEY };
  const heads: Record<string, string>[] = [];
  for (let i = 0; i < users; i++) {
    const name = `u${i}`;
    await call(gw.url, 'POST', '/gateway/api/users', admin, { username: name, password: 'bench-password-1', role: 'user' });
    const r = await call(gw.url, 'POST', '/login', {}, { username: name, password: 'bench-password-1' });
    heads.push({ Authorization: `Bearer ${r.json.token}` });
  }
  return {
    url: gw.url,
    heads,
    async stop() {
      gw.proc.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

const prompt = (tag: string) => ({ prompt: sampleWorkflow(tag) });

/** 3 users × 20 prompts posted at once (user by user); the longest wait of a user's first prompt, in durations. */
async function fairness(policy: 'fair' | 'fifo', durationMs: number): Promise<{ durations: number; ahead: number }> {
  const fake = await startFakeComfy({ promptDelayMs: durationMs });
  const s = await stack([fake], 3, { scheduler: { policy } });
  try {
    // one prompt first, so the worker is warm and its duration known
    const warm = await call(s.url, 'POST', '/prompt', s.heads[0], prompt('warm'));
    await fake.waitForPrompt(warm.json.prompt_id, 30_000);
    const t0 = Date.now();
    const posts = s.heads.flatMap((h, u) => Array.from({ length: 20 }, (_, i) => call(s.url, 'POST', '/prompt', h, prompt(`u${u}-${i}`))));
    const ids = (await Promise.all(posts)).map((r) => r.json.prompt_id as string);
    const firsts = [0, 1, 2].map((u) => ids.slice(u * 20, u * 20 + 20));
    const started = (id: string) => fake.prompts.get(id)?.start_time as number | undefined;
    const deadline = Date.now() + 120_000;
    while (firsts.some((l) => !l.some((id) => started(id))) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const d = fake.prompts.get(warm.json.prompt_id);
    const dur = d.end_time - d.start_time;
    const firstStart = firsts.map((l) => Math.min(...l.map((id) => started(id) ?? Infinity)));
    // how many of the batch's prompts ran before each user's first one: the order, free of timing noise
    const ahead = firstStart.map((t) => ids.filter((id) => (started(id) ?? Infinity) < t).length);
    return { durations: Math.max(...firstStart.map((t) => t - t0)) / dur, ahead: Math.max(...ahead) };
  } finally {
    await s.stop();
    await fake.close();
  }
}

/** Seconds to run `n` prompts of 3 users posted at once on `workers` workers. */
async function makespan(workers: number, n: number, durationMs: number): Promise<number> {
  const fakes = await Promise.all(Array.from({ length: workers }, () => startFakeComfy({ promptDelayMs: durationMs })));
  const s = await stack(fakes, 3, {});
  try {
    const t0 = Date.now();
    const r = await Promise.all(Array.from({ length: n }, (_, i) => call(s.url, 'POST', '/prompt', s.heads[i % 3], prompt(`t${i}`))));
    const ids = r.map((x) => x.json.prompt_id as string);
    const where = (id: string) => fakes.find((f) => f.prompts.has(id));
    const deadline = Date.now() + 180_000;
    while (ids.some((id) => !where(id)) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    await Promise.all(ids.map((id) => where(id)!.waitForPrompt(id, 180_000)));
    return (Date.now() - t0) / 1000;
  } finally {
    await s.stop();
    await Promise.all(fakes.map((f) => f.close()));
  }
}

const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.99))];

/** POST /prompt latency: held (the worker busy; the gateway answers after its journal fsync) and sent straight through. */
async function postLatency(): Promise<Record<string, number>> {
  const fake = await startFakeComfy({ promptDelayMs: 0 });
  const s = await stack([fake], 1, {});
  try {
    const direct: number[] = [];
    for (let i = 0; i < 150; i++) {
      const r = await call(s.url, 'POST', '/prompt', s.heads[0], prompt(`d${i}`));
      direct.push(r.ms);
      await fake.waitForPrompt(r.json.prompt_id, 30_000);
    }
    fake.promptDelayMs = 600_000;
    await call(s.url, 'POST', '/prompt', s.heads[0], prompt('blocker'));
    await call(s.url, 'POST', '/prompt', s.heads[0], prompt('waiting'));
    const held: number[] = [];
    for (let i = 0; i < 300; i++) held.push((await call(s.url, 'POST', '/prompt', s.heads[0], prompt(`h${i}`))).ms);
    return { post_p99_direct_ms: +p99(direct).toFixed(2), post_p99_held_ms: +p99(held).toFixed(2) };
  } finally {
    await s.stop();
    await fake.close();
  }
}

/** Runs every queue measurement once and returns the values (bench/run.ts prints them). */
export async function benchQueue(): Promise<Record<string, unknown>> {
  const duration = Number(process.env.BENCH_QUEUE_PROMPT_MS ?? 200);
  const fair = await fairness('fair', duration);
  const fifo = await fairness('fifo', duration);
  const one = await makespan(1, 24, duration);
  const two = await makespan(2, 24, duration);
  const latency = await postLatency();
  return {
    first_prompt_longest_wait_durations: { fair: +fair.durations.toFixed(2), fifo: +fifo.durations.toFixed(2), target_fair: '≤ 2' },
    first_prompt_most_prompts_ahead: { fair: fair.ahead, fifo: fifo.ahead },
    throughput_2_workers_vs_1: { ratio: +(one / two).toFixed(2), one_worker_s: one, two_workers_s: two, target: '≥ 1.9' },
    ...latency,
  };
}

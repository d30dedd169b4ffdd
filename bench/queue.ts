/* Queue benchmark (issue 12): fairness of the gateway's queue (3 users × 20 prompts queued at once on one worker:
 * the longest wait of a user's first prompt, in prompt durations, fair vs fifo), throughput of 2 workers vs 1, and
 * POST /prompt latency with the queue. The gateway runs as its own process; the fake workers run in this one. */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from '../tests/helpers/fakeComfy';
import { spawnBenchGateway } from './gateway';
import { runAsScript } from './util';

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
async function stack(fakes: FakeComfy[], users: number, config: Record<string, unknown>, env: Record<string, string> = {}) {
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
    env,
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

/** What the fairness run measured (all durations in ms unless named otherwise). */
interface Fairness {
  /** the longest wait of a user's first prompt (from the moment the 60 POSTs start), in execution durations */
  durations: number;
  /** the same wait in prompt durations as the worker sees them: start of one prompt to start of the next */
  slots: number;
  /** how many of the batch's prompts ran before the last user's first one (the order, free of timing noise) */
  ahead: number;
  exec_ms: number;
  start_to_start_ms: number;
  /** from the first POST to the first prompt's start: the posts themselves, not the scheduler */
  first_start_ms: number;
  /** the most the worker stood idle between two prompts of the batch (0: the gateway kept it fed) */
  max_idle_ms: number;
  /** whose prompts ran first (user numbers, in start order) */
  first_runs: string;
  /** ms from the start of the posts until each user's first POST was answered */
  first_answered_ms: number[];
  /**
   * the longest a user's first prompt waited after the gateway had answered one of that user's POSTs, in execution
   * durations: the scheduler's share of the wait, without the time the gateway took to read the 60 POSTs at all
   */
  after_answer: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** 3 users × 20 prompts posted at once (user by user); the longest wait of a user's first prompt, in durations. */
async function fairness(policy: 'fair' | 'fifo', durationMs: number): Promise<Fairness> {
  const fake = await startFakeComfy({ promptDelayMs: durationMs });
  // BENCH_QUEUE_COALESCE_MS: the scheduler's coalescing window (default: the gateway's, 50 ms)
  const coalesce = process.env.BENCH_QUEUE_COALESCE_MS ? { coalesce_ms: Number(process.env.BENCH_QUEUE_COALESCE_MS) } : {};
  const s = await stack([fake], 3, { scheduler: { policy, ...coalesce } });
  try {
    // one prompt first, so the worker is warm
    const warm = await call(s.url, 'POST', '/prompt', s.heads[0], prompt('warm'));
    await fake.waitForPrompt(warm.json.prompt_id, 30_000);
    const t0 = Date.now();
    const posts = s.heads.flatMap((h, u) => Array.from({ length: 20 }, (_, i) => call(s.url, 'POST', '/prompt', h, prompt(`u${u}-${i}`))));
    const answers = await Promise.all(posts);
    const ids = answers.map((r) => r.json.prompt_id as string);
    // when each user's first POST was answered (a held prompt is answered once it is journaled)
    const firstAnswered = [0, 1, 2].map((u) => Math.round(answers[u * 20].ms));
    const firsts = [0, 1, 2].map((u) => ids.slice(u * 20, u * 20 + 20));
    const started = (id: string) => fake.prompts.get(id)?.start_time as number | undefined;
    const deadline = Date.now() + 120_000;
    while (firsts.some((l) => !l.some((id) => started(id))) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    // the prompts that ran up to then, in the order the worker ran them (all finished but the last few)
    const ran = ids
      .map((id) => fake.prompts.get(id))
      .filter((e) => e?.start_time !== undefined)
      .sort((a, b) => a.start_time - b.start_time);
    const done = ran.filter((e) => e.end_time !== undefined);
    const exec = median(done.map((e) => e.end_time - e.start_time));
    const slot = median(ran.slice(1).map((e, i) => e.start_time - ran[i].start_time));
    const idle = Math.max(0, ...ran.slice(1).map((e, i) => (ran[i].end_time !== undefined ? e.start_time - ran[i].end_time : 0)));
    const firstStart = firsts.map((l) => Math.min(...l.map((id) => started(id) ?? Infinity)));
    const ahead = firstStart.map((t) => ids.filter((id) => (started(id) ?? Infinity) < t).length);
    const wait = Math.max(...firstStart.map((t) => t - t0));
    const answeredAt = [0, 1, 2].map((u) => t0 + Math.min(...answers.slice(u * 20, u * 20 + 20).map((r) => r.ms)));
    const afterAnswer = Math.max(0, ...firstStart.map((t, u) => t - answeredAt[u]));
    return {
      durations: wait / exec,
      slots: wait / slot,
      ahead: Math.max(...ahead),
      exec_ms: exec,
      start_to_start_ms: slot,
      first_start_ms: ran[0].start_time - t0,
      max_idle_ms: idle,
      first_answered_ms: firstAnswered,
      after_answer: afterAnswer / exec,
      first_runs: ran
        .slice(0, 9)
        .map((e) => Math.floor(ids.indexOf(e.prompt_id) / 20))
        .join(''),
    };
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

/**
 * POST /prompt latency, sequential, in two states: the worker idle (each prompt waited for before the next) and the
 * worker busy (with the queue: held, answered after the journal fsync; bypassed: ComfyUI queues it). `bypass` runs
 * the same gateway with its queue left out of the isolation layer (COMFYUI_GATEWAY_BENCH_BYPASS_QUEUE=1): the same
 * isolation work, prompts straight to ComfyUI.
 */
async function postLatency(
  bypass: boolean,
): Promise<{ idle: number; busy: number; idle_p50: number; busy_p50: number; settled: number; worker_reads_per_prompt: number }> {
  const fake = await startFakeComfy({ promptDelayMs: 0 });
  const s = await stack([fake], 1, {}, bypass ? { COMFYUI_GATEWAY_BENCH_BYPASS_QUEUE: '1' } : {});
  try {
    const idle: number[] = [];
    const settled: number[] = [];
    const asked = fake.requests.length;
    for (let i = 0; i < 300; i++) {
      const r = await call(s.url, 'POST', '/prompt', s.heads[0], prompt(`d${i}`));
      if (i >= 20) (i % 2 ? settled : idle).push(r.ms); // the first ones warm the JIT
      await fake.waitForPrompt(r.json.prompt_id, 30_000);
      // every other prompt: wait until the gateway has seen it end and done its bookkeeping (the usage read of
      // its history), so the next POST measures its own path without the previous prompt's work beside it
      if (i % 2 === 0) {
        const gone = Date.now() + 5000;
        while (Date.now() < gone) {
          const q = await call(s.url, 'GET', '/prompt', s.heads[0]);
          if (q.json?.exec_info?.queue_remaining === 0) break;
          await new Promise((res) => setTimeout(res, 5));
        }
        await new Promise((res) => setTimeout(res, 30)); // let the journal write of its usage land
      }
    }
    // what the gateway asked the worker per prompt besides the prompt itself (its own following of each prompt)
    const perPrompt = (fake.requests.filter((r, i) => i >= asked && !/prompt$/.test(r.rawPath)).length / 300).toFixed(2);
    fake.promptDelayMs = 600_000;
    await call(s.url, 'POST', '/prompt', s.heads[0], prompt('blocker'));
    await call(s.url, 'POST', '/prompt', s.heads[0], prompt('waiting'));
    const busy: number[] = [];
    for (let i = 0; i < 300; i++) busy.push((await call(s.url, 'POST', '/prompt', s.heads[0], prompt(`h${i}`))).ms);
    return {
      idle: +p99(idle).toFixed(2),
      busy: +p99(busy).toFixed(2),
      idle_p50: +median(idle).toFixed(2),
      settled: +p99(settled).toFixed(2),
      worker_reads_per_prompt: +perPrompt,
      busy_p50: +median(busy).toFixed(2),
    };
  } finally {
    await s.stop();
    await fake.close();
  }
}

/** Which parts run: BENCH_QUEUE_PARTS=fair,fifo,throughput,latency (default all). */
const PARTS = new Set((process.env.BENCH_QUEUE_PARTS ?? 'fair,fifo,throughput,latency').split(','));

const fairView = (f: Fairness) => ({
  wait_in_exec_durations: +f.durations.toFixed(2),
  wait_in_start_to_start_durations: +f.slots.toFixed(2),
  prompts_ahead: f.ahead,
  exec_ms: f.exec_ms,
  start_to_start_ms: f.start_to_start_ms,
  first_start_after_posts_began_ms: f.first_start_ms,
  worker_idle_max_ms: f.max_idle_ms,
  first_runs_by_user: f.first_runs,
  first_posts_answered_ms: f.first_answered_ms,
  wait_after_first_answer_in_exec_durations: +f.after_answer.toFixed(2),
});

/** Runs every queue measurement once and returns the values (bench/run.ts prints them). */
export async function benchQueue(): Promise<Record<string, unknown>> {
  const duration = Number(process.env.BENCH_QUEUE_PROMPT_MS ?? 200);
  const out: Record<string, unknown> = {};
  if (PARTS.has('fair')) out.first_prompt_longest_wait_fair = { ...fairView(await fairness('fair', duration)), target: '≤ 2 durations' };
  if (PARTS.has('fifo')) out.first_prompt_longest_wait_fifo = fairView(await fairness('fifo', duration));
  if (PARTS.has('throughput')) {
    const one = await makespan(1, 24, duration);
    const two = await makespan(2, 24, duration);
    out.throughput_2_workers_vs_1 = { ratio: +(one / two).toFixed(2), one_worker_s: one, two_workers_s: two, target: '≥ 1.9' };
  }
  if (PARTS.has('latency')) {
    const queued = await postLatency(false);
    const bypassed = await postLatency(true);
    out.post_prompt_p99_ms = {
      idle_worker: { queue: queued.idle, bypassed: bypassed.idle, added: +(queued.idle - bypassed.idle).toFixed(2) },
      idle_worker_settled: { queue: queued.settled, bypassed: bypassed.settled, added: +(queued.settled - bypassed.settled).toFixed(2) },
      busy_worker: { queue: queued.busy, bypassed: bypassed.busy, added: +(queued.busy - bypassed.busy).toFixed(2) },
      p50: { idle_worker: [queued.idle_p50, bypassed.idle_p50], busy_worker: [queued.busy_p50, bypassed.busy_p50] },
      worker_reads_per_prompt: { queue: queued.worker_reads_per_prompt, bypassed: bypassed.worker_reads_per_prompt },
      target_added: '≤ 2',
    };
  }
  return out;
}

if (require.main === module) runAsScript(benchQueue);

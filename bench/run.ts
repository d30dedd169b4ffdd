/*
 * npm run bench: the gateway against nginx (one worker, a plain keep-alive reverse proxy) and against ComfyUI
 * directly (the recording fake, in its own process), in one run. Every measurement is taken in rounds with the
 * order rotated (direct, nginx, gateway…), and medians are reported: the machine may be shared and noisy.
 * Installs nothing: nginx is used when present (`apt-get install nginx`), wrk when present, else autocannon.
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { sampleWorkflow } from '../tests/helpers/fakeComfy';
import { load, loadTool, median, type LoadResult } from './load';
import { findNginx, rssOf, startBare, startFake, startGateway, startNginx, stop, type BenchGateway, type Fake } from './procs';

const KEY = 'bench-static-key-0123456789abcdef';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const WS_COUNT = Number(process.env.BENCH_WS_COUNT ?? 50_000);
const IDLE_WS = Number(process.env.BENCH_IDLE_WS ?? 2000);
/** BENCH_ONLY=small,view,ws,idle,storm runs a subset (for profiling one path). */
const ONLY = new Set((process.env.BENCH_ONLY ?? 'small,view,ws,idle,storm,extra').split(','));
const NGINX_PORTS = Array.from({ length: 20 }, (_, i) => 18160 + i);
const PASSWORD = 'bench-password-1';

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
function call(
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: object,
  via = agent,
): Promise<{ status: number; json: any; ms: number }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const data = body ? JSON.stringify(body) : undefined;
    const req = http.request(
      url,
      { method, agent: via, headers: { ...headers, ...(data ? { 'content-type': 'application/json' } : {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let json: any = null;
          try {
            json = JSON.parse(text);
          } catch {
            json = text;
          }
          resolve({ status: res.statusCode ?? 0, json, ms: Number(process.hrtime.bigint() - t0) / 1e6 });
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

async function must(url: string, method: string, headers: Record<string, string>, body?: object) {
  const r = await call(url, method, headers, body);
  if (r.status >= 300) throw new Error(`${method} ${url}: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

const rotate = <T>(xs: T[], i: number) => xs.map((_, k) => xs[(k + i) % xs.length]);
function round(x: number, d = 0): number | null {
  return Number.isFinite(x) ? +x.toFixed(d) : null;
}

/** Runs each named target once per round, order rotated, and keeps every result. */
async function rounds(targets: Record<string, () => Promise<LoadResult>>): Promise<Record<string, LoadResult[]>> {
  const out: Record<string, LoadResult[]> = {};
  const names = Object.keys(targets);
  for (let i = 0; i < ROUNDS; i++) for (const n of rotate(names, i)) (out[n] ??= []).push(await targets[n]());
  return out;
}

/** The median over rounds of a/b taken within each round (the two ran back to back, under the same noise). */
function roundRatio(a: number[] | undefined, b: number[] | undefined): number | null {
  if (!a || !b || a.length !== b.length) return null;
  return round(median(a.map((x, i) => x / b[i])), 2);
}

function summary(rs: LoadResult[]) {
  return {
    rps: median(rs.map((r) => r.rps)),
    p99_ms: median(rs.map((r) => r.p99_ms)),
    MBps: median(rs.map((r) => r.MBps)),
    errors: rs.reduce((a, r) => a + r.errors, 0),
    all_rps: rs.map((r) => Math.round(r.rps)),
  };
}

async function wsRate(url: string, fake: Fake, headers: Record<string, string>, msg: object): Promise<number> {
  const ws = new WebSocket(url, { headers, perMessageDeflate: false });
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  await new Promise((r) => setTimeout(r, 200));
  let got = 0;
  const done = new Promise<void>((resolve) =>
    ws.on('message', () => {
      if (++got >= WS_COUNT) resolve();
    }),
  );
  const t0 = process.hrtime.bigint();
  await fake.send({ cmd: 'blast', count: WS_COUNT, msg }, 'blasted');
  await Promise.race([done, new Promise((r) => setTimeout(r, 60_000))]);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const closed = new Promise((r) => ws.once('close', r));
  ws.close();
  await closed;
  await new Promise((r) => setTimeout(r, 100));
  return got / secs;
}

async function openIdle(url: string, headers: Record<string, string>): Promise<WebSocket> {
  const ws = new WebSocket(url, { headers, perMessageDeflate: false });
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  return ws;
}

async function main(): Promise<void> {
  const results: Record<string, any> = {
    date: new Date().toISOString().slice(0, 10),
    machine: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
    load_tool: loadTool,
    seconds_per_run: SECONDS,
    rounds: ROUNDS,
  };
  const rows: string[][] = [];
  const fake = await startFake();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-'));
  // The gateway as shipped (config.json `{}`: isolation on, access log at info to its file) plus a static key.
  const gw: BenchGateway = await startGateway({ dir, config: {}, args: ['--upstream', fake.url, '--api-key', KEY] });
  const nginxBin = findNginx();
  const nginxDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-nginx-'));
  const nginx = nginxBin ? await startNginx(nginxBin, fake.url, nginxDir, NGINX_PORTS) : null;
  const bare = await startBare(fake.url);
  if (!nginx) results.nginx = 'not installed (apt-get install nginx): gateway/nginx ratios are missing';
  const admin = { 'X-API-Key': KEY };
  try {
    await must(`${gw.url}/gateway/api/users`, 'POST', admin, { username: 'alice', password: PASSWORD, role: 'user' });
    const jwt = (await must(`${gw.url}/login`, 'POST', {}, { username: 'alice', password: PASSWORD })).token as string;
    const session = { Authorization: `Bearer ${jwt}` };
    const token = (await must(`${gw.url}/gateway/api/tokens`, 'POST', session, { name: 'bench' })).token as string;
    const personal = { Authorization: `Bearer ${token}` };
    await new Promise((r) => setTimeout(r, 500));
    results.gateway_idle_rss_MiB = round(rssOf(gw.proc.pid!) / 2 ** 20, 1);
    const ratio = (a: number, b: number | undefined) => (b ? round(a / b, 2) : null);

    if (ONLY.has('small')) {
      const targets: Record<string, () => Promise<LoadResult>> = {
        direct: () => load(`${fake.url}/prompt`, { connections: 50, seconds: SECONDS }),
        gw_key: () => load(`${gw.url}/prompt`, { connections: 50, seconds: SECONDS, headers: admin }),
        gw_jwt: () => load(`${gw.url}/prompt`, { connections: 50, seconds: SECONDS, headers: session }),
        gw_token: () => load(`${gw.url}/prompt`, { connections: 50, seconds: SECONDS, headers: personal }),
      };
      if (nginx) targets.nginx = () => load(`${nginx.url}/prompt`, { connections: 50, seconds: SECONDS });
      targets.bare = () => load(`${bare.url}/prompt`, { connections: 50, seconds: SECONDS });
      await load(`${gw.url}/prompt`, { connections: 10, seconds: 1, headers: admin }); // warm-up (JIT)
      const r = await rounds(targets);
      const s = Object.fromEntries(Object.entries(r).map(([k, v]) => [k, summary(v)]));
      results.small_get = s;
      for (const [k, label] of [
        ['gw_key', 'static key'],
        ['gw_jwt', 'session JWT'],
        ['gw_token', 'personal token'],
      ] as const) {
        const perRound = roundRatio(
          r[k].map((x) => x.rps),
          r.nginx?.map((x) => x.rps),
        );
        rows.push([
          `small GET /prompt, 50 conns, ${label}`,
          `${Math.round(s.direct.rps)}`,
          nginx ? `${Math.round(s.nginx.rps)}` : '–',
          `${Math.round(s[k].rps)}`,
          `${ratio(s[k].rps, s.direct.rps)}`,
          `${ratio(s[k].rps, s.nginx?.rps) ?? '–'} (per round ${perRound ?? '–'})`,
          '≥ 0.6× nginx',
          `${Math.round(s.bare.rps)} (${ratio(s[k].rps, s.bare.rps)})`,
        ]);
        rows.push([
          `  p99 latency (ms), ${label}`,
          `${s.direct.p99_ms}`,
          nginx ? `${s.nginx.p99_ms}` : '–',
          `${s[k].p99_ms}`,
          '',
          `${ratio(s[k].p99_ms, s.nginx?.p99_ms) ?? '–'}`,
          '≤ 2× nginx',
          `${s.bare.p99_ms}`,
        ]);
      }
    }

    if (ONLY.has('view')) {
      await fake.send({ cmd: 'file', name: 'alice/bench-2mb.bin', bytes: 2 * 1024 * 1024 }, 'filed');
      const viewPath = '/view?filename=bench-2mb.bin&subfolder=alice&type=output';
      const targets: Record<string, () => Promise<LoadResult>> = {
        direct: () => load(`${fake.url}${viewPath}`, { connections: 8, seconds: SECONDS }),
        gw_user: () => load(`${gw.url}${viewPath}`, { connections: 8, seconds: SECONDS, headers: session }),
      };
      if (nginx) targets.nginx = () => load(`${nginx.url}${viewPath}`, { connections: 8, seconds: SECONDS });
      targets.bare = () => load(`${bare.url}${viewPath}`, { connections: 8, seconds: SECONDS });
      const probe = await call(`${gw.url}${viewPath}`, 'GET', session);
      if (probe.status !== 200) throw new Error(`/view as alice: ${probe.status}`);
      const vr = await rounds(targets);
      const s = Object.fromEntries(Object.entries(vr).map(([k, v]) => [k, summary(v)]));
      results.view_2mb = s;
      const perRound = roundRatio(
        vr.gw_user.map((x) => x.MBps),
        vr.nginx?.map((x) => x.MBps),
      );
      rows.push([
        '2 MB /view, 8 conns, normal user (isolation on), MiB/s',
        `${Math.round(s.direct.MBps)}`,
        nginx ? `${Math.round(s.nginx.MBps)}` : '–',
        `${Math.round(s.gw_user.MBps)}`,
        `${ratio(s.gw_user.MBps, s.direct.MBps)}`,
        `${ratio(s.gw_user.MBps, s.nginx?.MBps) ?? '–'} (per round ${perRound ?? '–'})`,
        '≥ 0.75× nginx',
        `${Math.round(s.bare.MBps)} (${ratio(s.gw_user.MBps, s.bare.MBps)})`,
      ]);
    }

    if (ONLY.has('ws')) {
      // Sampler progress of alice's own prompt: the bulk of real WebSocket traffic, and what isolation must let through.
      const queued = await must(`${gw.url}/prompt`, 'POST', session, { prompt: sampleWorkflow('bench') });
      const msg = { type: 'progress', data: { value: 1, max: 20, prompt_id: queued.prompt_id, node: '3' } };
      const wsu = (base: string) => `${base.replace(/^http/, 'ws')}/ws?clientId=bench`;
      const targets: Record<string, () => Promise<number>> = {
        direct: () => wsRate(wsu(fake.url), fake, {}, msg),
        gw_user: () => wsRate(wsu(gw.url), fake, session, msg),
      };
      if (nginx) targets.nginx = () => wsRate(wsu(nginx.url), fake, {}, msg);
      await targets.gw_user();
      const r: Record<string, number[]> = {};
      for (let i = 0; i < ROUNDS; i++) for (const n of rotate(Object.keys(targets), i)) (r[n] ??= []).push(await targets[n]());
      const s = Object.fromEntries(Object.entries(r).map(([k, v]) => [k, { msgs_per_s: Math.round(median(v)), all: v.map(Math.round) }]));
      results.websocket = s;
      const perRound = roundRatio(r.gw_user, r.nginx);
      rows.push([
        `WebSocket messages/s (${WS_COUNT} progress frames of the user's prompt), normal user`,
        `${s.direct.msgs_per_s}`,
        nginx ? `${s.nginx.msgs_per_s}` : '–',
        `${s.gw_user.msgs_per_s}`,
        `${ratio(s.gw_user.msgs_per_s, s.direct.msgs_per_s)}`,
        `${ratio(s.gw_user.msgs_per_s, s.nginx?.msgs_per_s) ?? '–'} (per round ${perRound ?? '–'})`,
        '≥ 0.8× nginx',
      ]);
    }

    if (ONLY.has('storm')) {
      // 50 parallel logins (bcrypt at the default cost) while another client keeps asking for /prompt.
      // its own connection: the logins must not hold up the probe inside this process's agent
      const probeAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const probeOnce = () => call(`${gw.url}/prompt`, 'GET', admin, undefined, probeAgent);
      const probeFor = async (ms: number) => {
        const lat: number[] = [];
        const end = Date.now() + ms;
        while (Date.now() < end) lat.push((await probeOnce()).ms);
        return lat;
      };
      // The same probe without a storm first: on a shared machine the event loop is delayed by others too.
      await gw.ask('eld-start');
      const base = await probeFor(3000);
      const quiet = await gw.ask<{ p50_ms: number; p99_ms: number; max_ms: number }>('eld-stop');
      await gw.ask('eld-start');
      let stormDone = false;
      const storm = Promise.all(
        Array.from({ length: 50 }, () => call(`${gw.url}/login`, 'POST', {}, { username: 'alice', password: PASSWORD })),
      ).finally(() => (stormDone = true));
      const during: number[] = [];
      while (!stormDone) during.push((await probeOnce()).ms);
      const logins = await storm;
      probeAgent.destroy();
      const eld = await gw.ask<{ p50_ms: number; p99_ms: number; max_ms: number }>('eld-stop');
      const ok = logins.filter((l) => l.status === 200).length;
      results.login_storm = {
        logins_ok: ok,
        // refused at once, before any hashing, by the per-address cap on password checks in flight
        logins_429: logins.filter((l) => l.status === 429).length,
        storm_ms: round(Math.max(...logins.map((l) => l.ms))),
        event_loop_delay: eld,
        event_loop_delay_without_storm: quiet,
        other_requests: {
          before_p50_ms: round(median(base), 2),
          during_p50_ms: round(median(during), 2),
          during_max_ms: round(Math.max(...during), 2),
          count: during.length,
        },
      };
      rows.push([
        `50 parallel logins (${ok} signed in, the rest 429 at once): gateway event-loop delay max (ms)`,
        '',
        '',
        `${eld.max_ms} (p99 ${eld.p99_ms}; without a storm: max ${quiet.max_ms}, p99 ${quiet.p99_ms})`,
        '',
        '',
        '≤ 10 ms',
      ]);
      rows.push([
        '  other requests during the storm, latency (ms)',
        '',
        '',
        `max ${round(Math.max(...during), 1)}, p50 ${round(median(during), 1)} (without: max ${round(Math.max(...base), 1)}, p50 ${round(median(base), 1)})`,
        '',
        '',
        '',
      ]);
    }

    if (ONLY.has('idle')) {
      // The relay allows 64 sockets per principal: the idle sockets are spread over users of their own.
      const per = 64;
      const users = Math.ceil(IDLE_WS / per);
      // One after another: the gateway caps password checks in flight per client address (4), and these are set-up.
      const creds: Record<string, string>[] = [];
      for (let i = 0; i < users; i++) {
        await must(`${gw.url}/gateway/api/users`, 'POST', admin, { username: `idle${i}`, password: PASSWORD, role: 'user' });
        const login = await must(`${gw.url}/login`, 'POST', {}, { username: `idle${i}`, password: PASSWORD });
        creds.push({ Authorization: `Bearer ${login.token}` });
      }
      await new Promise((r) => setTimeout(r, 1000));
      const before = rssOf(gw.proc.pid!);
      const sockets: WebSocket[] = [];
      for (let i = 0; i < IDLE_WS; i += 50)
        sockets.push(
          ...(await Promise.all(
            Array.from({ length: Math.min(50, IDLE_WS - i) }, (_, k) =>
              openIdle(`${gw.url.replace(/^http/, 'ws')}/ws?clientId=idle${i + k}`, creds[Math.floor((i + k) / per)]),
            ),
          )),
        );
      await new Promise((r) => setTimeout(r, 2000));
      const after = rssOf(gw.proc.pid!);
      for (const s of sockets) s.terminate();
      results.idle = {
        rss_MiB: round(before / 2 ** 20, 1),
        sockets: IDLE_WS,
        rss_with_sockets_MiB: round(after / 2 ** 20, 1),
        per_socket_KiB: round((after - before) / IDLE_WS / 1024, 1),
      };
      rows.push([
        `gateway RSS idle / with ${IDLE_WS} idle WebSockets (MiB)`,
        '',
        '',
        `${results.gateway_idle_rss_MiB} / ${round(after / 2 ** 20, 1)} (+${round((after - before) / 2 ** 20, 1)})`,
        '',
        '',
        '',
      ]);
    }
  } finally {
    await stop(gw.proc);
    await stop(bare.proc);
    if (nginx) await stop(nginx.proc, 'SIGQUIT');
    fake.proc.send({ cmd: 'exit' });
    agent.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(nginxDir, { recursive: true, force: true });
  }

  if (ONLY.has('extra')) {
    for (const [name, file] of [
      ['isolation', './isolation'],
      ['downloads', './downloads'],
      ['store', './store'],
      ['queue', './queue'],
    ] as const) {
      try {
        const mod = require(file) as Record<string, () => Promise<Record<string, unknown>>>;
        const fn = mod[`bench${name[0].toUpperCase()}${name.slice(1)}`];
        if (fn) results[name] = await fn();
      } catch (e) {
        results[name] = { error: (e as Error).message };
      }
    }
  }
  process.stdout.write(JSON.stringify(results, null, 2) + '\n\n');
  const head = [
    'measure',
    'direct',
    'nginx (1 worker)',
    'gateway',
    'gateway / direct',
    'gateway / nginx',
    'target',
    'bare node:http pipe (gateway / bare)',
  ];
  process.stdout.write(`| ${head.join(' | ')} |\n|${head.map(() => '---').join('|')}|\n`);
  for (const r of rows) process.stdout.write(`| ${[...r, ...Array(head.length - r.length).fill('')].join(' | ')} |\n`);
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});

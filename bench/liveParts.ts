/* The long-lived parts of `npm run bench`: WebSocket message rate, the login storm, idle memory with idle sockets. */
import http from 'node:http';
import WebSocket from 'ws';
import { sampleWorkflow } from '../tests/helpers/fakeComfy';
import { median } from './load';
import { rssOf, type Fake } from './procs';
import { call, must, ratio, rotate, round, roundRatio, type BenchCtx } from './util';

const WS_COUNT = Number(process.env.BENCH_WS_COUNT ?? 50_000);
const IDLE_WS = Number(process.env.BENCH_IDLE_WS ?? 2000);

async function open(url: string, headers: Record<string, string>): Promise<WebSocket> {
  const ws = new WebSocket(url, { headers, perMessageDeflate: false });
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  return ws;
}

async function wsRate(url: string, fake: Fake, headers: Record<string, string>, msg: object): Promise<number> {
  const ws = await open(url, headers);
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

/** Progress frames of the user's own prompt (the bulk of real WebSocket traffic, what isolation must let through). */
export async function wsPart(ctx: BenchCtx): Promise<void> {
  const { gw, fake, nginx } = ctx;
  const queued = await must(`${gw.url}/prompt`, 'POST', ctx.session, { prompt: sampleWorkflow('bench') });
  const msg = { type: 'progress', data: { value: 1, max: 20, prompt_id: queued.prompt_id, node: '3' } };
  const wsu = (base: string) => `${base.replace(/^http/, 'ws')}/ws?clientId=bench`;
  const targets: Record<string, () => Promise<number>> = {
    direct: () => wsRate(wsu(fake.url), fake, {}, msg),
    gw_user: () => wsRate(wsu(gw.url), fake, ctx.session, msg),
  };
  if (nginx) targets.nginx = () => wsRate(wsu(nginx.url), fake, {}, msg);
  await targets.gw_user();
  const r: Record<string, number[]> = {};
  for (let i = 0; i < ctx.rounds; i++) for (const n of rotate(Object.keys(targets), i)) (r[n] ??= []).push(await targets[n]());
  const s = Object.fromEntries(Object.entries(r).map(([k, v]) => [k, { msgs_per_s: Math.round(median(v)), all: v.map(Math.round) }]));
  ctx.results.websocket = s;
  const perRound = roundRatio(r.gw_user, r.nginx);
  ctx.rows.push([
    `WebSocket messages/s (${WS_COUNT} progress frames of the user's prompt), normal user`,
    `${s.direct.msgs_per_s}`,
    nginx ? `${s.nginx.msgs_per_s}` : '–',
    `${s.gw_user.msgs_per_s}`,
    `${ratio(s.gw_user.msgs_per_s, s.direct.msgs_per_s)}`,
    `${ratio(s.gw_user.msgs_per_s, s.nginx?.msgs_per_s) ?? '–'} (per round ${perRound ?? '–'})`,
    '≥ 0.8× nginx',
  ]);
}

type Eld = { p50_ms: number; p99_ms: number; max_ms: number };

/** 50 parallel logins (bcrypt at the default cost) while another client keeps asking for /prompt. */
export async function stormPart(ctx: BenchCtx): Promise<void> {
  const { gw, admin } = ctx;
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
  const quiet = await gw.ask<Eld>('eld-stop');
  await gw.ask('eld-start');
  let stormDone = false;
  const storm = Promise.all(
    Array.from({ length: 50 }, () => call(`${gw.url}/login`, 'POST', {}, { username: 'alice', password: ctx.password })),
  ).finally(() => (stormDone = true));
  const during: number[] = [];
  while (!stormDone) during.push((await probeOnce()).ms);
  const logins = await storm;
  probeAgent.destroy();
  const eld = await gw.ask<Eld>('eld-stop');
  const ok = logins.filter((l) => l.status === 200).length;
  ctx.results.login_storm = {
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
  ctx.rows.push([
    `50 parallel logins (${ok} signed in, the rest 429 at once): gateway event-loop delay max (ms)`,
    '',
    '',
    `${eld.max_ms} (p99 ${eld.p99_ms}; without a storm: max ${quiet.max_ms}, p99 ${quiet.p99_ms})`,
    '',
    '',
    '≤ 10 ms',
  ]);
  ctx.rows.push([
    '  other requests during the storm, latency (ms)',
    '',
    '',
    `max ${round(Math.max(...during), 1)}, p50 ${round(median(during), 1)} (without: max ${round(Math.max(...base), 1)}, p50 ${round(median(base), 1)})`,
    '',
    '',
    '',
  ]);
}

/** RSS with IDLE_WS idle WebSockets; the relay allows 64 per principal, so they are spread over users of their own. */
export async function idlePart(ctx: BenchCtx): Promise<void> {
  const { gw, admin } = ctx;
  const per = 64;
  const users = Math.ceil(IDLE_WS / per);
  // One after another: the gateway caps password checks in flight per client address (4), and these are set-up.
  const creds: Record<string, string>[] = [];
  for (let i = 0; i < users; i++) {
    await must(`${gw.url}/gateway/api/users`, 'POST', admin, { username: `idle${i}`, password: ctx.password, role: 'user' });
    const login = await must(`${gw.url}/login`, 'POST', {}, { username: `idle${i}`, password: ctx.password });
    creds.push({ Authorization: `Bearer ${login.token}` });
  }
  await new Promise((r) => setTimeout(r, 1000));
  const before = rssOf(gw.proc.pid!);
  const sockets: WebSocket[] = [];
  for (let i = 0; i < IDLE_WS; i += 50)
    sockets.push(
      ...(await Promise.all(
        Array.from({ length: Math.min(50, IDLE_WS - i) }, (_, k) =>
          open(`${gw.url.replace(/^http/, 'ws')}/ws?clientId=idle${i + k}`, creds[Math.floor((i + k) / per)]),
        ),
      )),
    );
  await new Promise((r) => setTimeout(r, 2000));
  const after = rssOf(gw.proc.pid!);
  for (const s of sockets) s.terminate();
  ctx.results.idle = {
    rss_MiB: round(before / 2 ** 20, 1),
    sockets: IDLE_WS,
    rss_with_sockets_MiB: round(after / 2 ** 20, 1),
    per_socket_KiB: round((after - before) / IDLE_WS / 1024, 1),
  };
  ctx.rows.push([
    `gateway RSS idle / with ${IDLE_WS} idle WebSockets (MiB)`,
    '',
    '',
    `${ctx.results.gateway_idle_rss_MiB} / ${round(after / 2 ** 20, 1)} (+${round((after - before) / 2 ** 20, 1)})`,
    '',
    '',
    '',
  ]);
}

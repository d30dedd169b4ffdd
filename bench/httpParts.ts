/* The HTTP parts of `npm run bench`: the small authenticated GET and the 2 MB /view, against nginx and a bare pipe. */
import { load, type LoadResult } from './load';
import { call, ratio, roundRatio, rounds, summary, withCost, nginxWorker, type BenchCtx } from './util';

type Summary = ReturnType<typeof summary>;

/** The row of CPU per request (and minor faults) of each proxy process, beside the rates. */
function costRow(label: string, s: Record<string, Summary>, gwKey: string, nginx: boolean): string[] {
  const c = (x: Summary | undefined) => (x ? `${x.cpu_ms_per_req} (${x.minflt_per_req})` : '–');
  const g = s[gwKey];
  return [
    `  CPU ms per request of the proxy process (minor page faults), ${label}`,
    c(s.direct),
    nginx ? c(s.nginx) : '–',
    c(g),
    '',
    `${ratio(g.cpu_ms_per_req ?? NaN, s.nginx?.cpu_ms_per_req ?? undefined) ?? '–'}`,
    '',
    c(s.bare),
  ];
}

/** Small `GET /prompt` (50 connections) with the static key, a session JWT and a personal token. */
export async function smallPart(ctx: BenchCtx): Promise<void> {
  const { gw, fake, nginx, bare, seconds } = ctx;
  const nginxPid = nginxWorker(nginx?.proc.pid);
  const at = (pid: number | undefined, url: string, headers?: Record<string, string>) => () =>
    withCost(pid, seconds, () => load(`${url}/prompt`, { connections: 50, seconds, headers }));
  const targets: Record<string, () => Promise<LoadResult>> = {
    direct: at(fake.proc.pid, fake.url),
    gw_key: at(gw.proc.pid, gw.url, ctx.admin),
    gw_jwt: at(gw.proc.pid, gw.url, ctx.session),
    gw_token: at(gw.proc.pid, gw.url, ctx.personal),
  };
  if (nginx) targets.nginx = at(nginxPid, nginx.url);
  targets.bare = at(bare.proc.pid, bare.url);
  await load(`${gw.url}/prompt`, { connections: 10, seconds: 1, headers: ctx.admin }); // warm-up (JIT)
  const r = await rounds(ctx.rounds, targets);
  const s = Object.fromEntries(Object.entries(r).map(([k, v]) => [k, summary(v)]));
  ctx.results.small_get = s;
  for (const [k, label] of [
    ['gw_key', 'static key'],
    ['gw_jwt', 'session JWT'],
    ['gw_token', 'personal token'],
  ] as const) {
    const perRound = roundRatio(
      r[k].map((x) => x.rps),
      r.nginx?.map((x) => x.rps),
    );
    ctx.rows.push([
      `small GET /prompt, 50 conns, ${label}`,
      `${Math.round(s.direct.rps)}`,
      nginx ? `${Math.round(s.nginx.rps)}` : '–',
      `${Math.round(s[k].rps)}`,
      `${ratio(s[k].rps, s.direct.rps)}`,
      `${ratio(s[k].rps, s.nginx?.rps) ?? '–'} (per round ${perRound ?? '–'})`,
      '≥ 0.6× nginx',
      `${Math.round(s.bare.rps)} (${ratio(s[k].rps, s.bare.rps)})`,
    ]);
    ctx.rows.push([
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
  ctx.rows.push(costRow('static key', s, 'gw_key', !!nginx));
}

/** A 2 MB `/view` of the user's own output (8 connections) as a normal user, isolation on. */
export async function viewPart(ctx: BenchCtx): Promise<void> {
  const { gw, fake, nginx, bare, seconds } = ctx;
  await fake.send({ cmd: 'file', name: 'alice/bench-2mb.bin', bytes: 2 * 1024 * 1024 }, 'filed');
  const viewPath = '/view?filename=bench-2mb.bin&subfolder=alice&type=output';
  const at = (pid: number | undefined, url: string, headers?: Record<string, string>) => () =>
    withCost(pid, seconds, () => load(`${url}${viewPath}`, { connections: 8, seconds, headers }));
  const targets: Record<string, () => Promise<LoadResult>> = {
    direct: at(fake.proc.pid, fake.url),
    gw_user: at(gw.proc.pid, gw.url, ctx.session),
  };
  if (nginx) targets.nginx = at(nginxWorker(nginx.proc.pid), nginx.url);
  targets.bare = at(bare.proc.pid, bare.url);
  const probe = await call(`${gw.url}${viewPath}`, 'GET', ctx.session);
  if (probe.status !== 200) throw new Error(`/view as alice: ${probe.status}`);
  const vr = await rounds(ctx.rounds, targets);
  const s = Object.fromEntries(Object.entries(vr).map(([k, v]) => [k, summary(v)]));
  ctx.results.view_2mb = s;
  const perRound = roundRatio(
    vr.gw_user.map((x) => x.MBps),
    vr.nginx?.map((x) => x.MBps),
  );
  ctx.rows.push([
    '2 MB /view, 8 conns, normal user (isolation on), MiB/s',
    `${Math.round(s.direct.MBps)}`,
    nginx ? `${Math.round(s.nginx.MBps)}` : '–',
    `${Math.round(s.gw_user.MBps)}`,
    `${ratio(s.gw_user.MBps, s.direct.MBps)}`,
    `${ratio(s.gw_user.MBps, s.nginx?.MBps) ?? '–'} (per round ${perRound ?? '–'})`,
    '≥ 0.75× nginx',
    `${Math.round(s.bare.MBps)} (${ratio(s.gw_user.MBps, s.bare.MBps)})`,
  ]);
  ctx.rows.push(costRow('2 MB /view', s, 'gw_user', !!nginx));
}

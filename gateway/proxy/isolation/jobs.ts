import type { Interceptor } from '../../app';
import { AppError } from '../../errors';
import type { RequestContext } from '../../http/context';
import type { IsolationContext } from './context';
import { viewExtraData } from './entries';
import { heldJob, upstreamOfPrompt } from './held';
import {
  callUpstream,
  isObj,
  missingId,
  seesAll,
  sendJson,
  sendUpstream,
  upstreamHeaders,
  upstreamJson,
  upstreamUrl,
  withQuery,
} from './http';

function nonNegative(q: URLSearchParams, name: string): number | null {
  const v = q.get(name);
  if (v === null) return null;
  if (!/^\s*\d+\s*$/.test(v)) throw new AppError(400, 'INVALID_REQUEST', `${name} must be a non-negative integer`);
  return parseInt(v, 10);
}

/** The same route with the job id replaced (everything after it kept). */
function withJobId(ctx: RequestContext, id: string): string {
  const s = [ctx.route.segments[0], id, ...ctx.route.segments.slice(2)].map(encodeURIComponent).join('/');
  return (ctx.route.apiPrefixed ? '/api/' : '/') + s;
}

/** ComfyUI's /api/jobs (and /api/jobs/{id}…): the caller's jobs only, paginated after filtering. */
export function jobsInterceptors(iso: IsolationContext): Interceptor[] {
  const list: Interceptor = {
    id: 'isolation-jobs-list',
    routes: [{ path: '/jobs', methods: ['GET', 'HEAD'] }],
    async handle(req, res, ctx, forward) {
      const p = ctx.principal!;
      const all = seesAll(p, iso.separate);
      // Prompts the gateway holds are ComfyUI's pending jobs to the client, in the order they will be released.
      const wanted = ctx.query.get('status');
      const showHeld = !wanted || wanted.split(',').some((x) => x.trim() === 'pending');
      const held = iso.queue && showHeld ? iso.queue.held(null).map((h) => ({ h })) : [];
      const heldJobs = held.filter(({ h }) => all || iso.queue!.keys.nameOf(h.owner) === p.username).map(({ h }) => heldJob(h, h.number));
      // job summaries carry no extra_data; with several workers the lists are merged
      if (all && !heldJobs.length && !iso.workers.many) return forward();
      req.resume();
      const limit = nonNegative(ctx.query, 'limit');
      const offset = nonNegative(ctx.query, 'offset') ?? 0;
      const q = new URLSearchParams(ctx.query);
      q.delete('limit');
      q.delete('offset');
      const answers = await iso.workers.each('GET', withQuery(ctx, q), upstreamHeaders(req, ctx, iso.cookieName, iso.upstream));
      const up = (answers.find((a) => a.res.status === 200) ?? answers[0]).res;
      const j = upstreamJson(up);
      // Several workers: every worker's jobs in one list (a worker that did not answer only loses its part).
      if (answers.length > 1 && isObj(j) && Array.isArray(j.jobs))
        j.jobs = answers.flatMap((a) => {
          const x = a.res.status === 200 ? upstreamJson(a.res) : null;
          return isObj(x) && Array.isArray(x.jobs) ? x.jobs : [];
        });
      if (!isObj(j) || !Array.isArray(j.jobs))
        return up.status === 200
          ? sendJson(req, res, { jobs: [], pagination: { offset, limit, total: 0, has_more: false } })
          : sendUpstream(req, res, up);
      const mine = j.jobs
        .filter(
          (job: unknown) =>
            isObj(job) && typeof job.id === 'string' && (all || iso.ledger.owner(iso.promptIds.toClient(job.id)) === p.username),
        )
        .map((job: Record<string, unknown>): Record<string, unknown> => ({ ...job, id: iso.promptIds.toClient(job.id as string) }));
      if (heldJobs.length || answers.length > 1) {
        const asc = ctx.query.get('sort_order') === 'asc';
        mine.push(...heldJobs);
        const t = (x: Record<string, unknown>) => Number(x.create_time) || 0;
        mine.sort((a, b) => (asc ? t(a) - t(b) : t(b) - t(a)));
      }
      const page = mine.slice(offset, limit === null ? undefined : offset + limit);
      const pagination = {
        ...(isObj(j.pagination) ? j.pagination : {}),
        offset,
        limit,
        total: mine.length,
        has_more: offset + page.length < mine.length,
      };
      sendJson(req, res, { ...j, jobs: page, pagination }, 200, up);
    },
  };

  const one: Interceptor = {
    id: 'isolation-jobs-one',
    routes: [{ path: '/jobs/*', prefix: true }],
    async handle(req, res, ctx, forward) {
      const p = ctx.principal!;
      const id = ctx.route.segments[1];
      const all = seesAll(p, iso.separate);
      const mine = iso.ledger.owner(id) === p.username;
      const method = req.method ?? 'GET';
      const held =
        (all || mine) && (method === 'GET' || method === 'HEAD') && ctx.route.segments.length === 2 ? iso.queue?.held(null) : undefined;
      const at = held ? held.findIndex((h) => h.id === id) : -1;
      if (held && at >= 0) {
        // Held by the gateway: a pending job, as ComfyUI shows one still in its queue.
        req.resume();
        const h = held[at];
        const body = JSON.parse(h.body) as Record<string, unknown>;
        const workflow = {
          prompt: body.prompt ?? {},
          extra_data: viewExtraData(
            { ...(isObj(body.extra_data) ? body.extra_data : {}), client_id: h.upstreamClientId },
            id,
            p.username,
            iso.ledger,
          ),
        };
        return sendJson(req, res, { ...heldJob(h, h.number), outputs: {}, execution_status: null, workflow });
      }
      if (!all && !mine) {
        // Someone else's job: ComfyUI's own answer for a job that does not exist.
        ctx.route = { ...ctx.route, forwardPath: withJobId(ctx, missingId()) };
        return forward();
      }
      const detail = (method === 'GET' || method === 'HEAD') && ctx.route.segments.length === 2;
      // Several workers: the job is on the worker that ran it.
      ctx.upstream = upstreamOfPrompt(iso, id);
      if (!detail) return forward();
      req.resume();
      const up = await callUpstream(ctx.upstream, 'GET', upstreamUrl(ctx), upstreamHeaders(req, ctx, iso.cookieName, iso.upstream));
      const j = upstreamJson(up);
      if (!isObj(j)) return sendUpstream(req, res, up);
      const out: Record<string, unknown> = { ...j };
      if (isObj(j.workflow)) out.workflow = { ...j.workflow, extra_data: viewExtraData(j.workflow.extra_data, id, p.username, iso.ledger) };
      sendJson(req, res, out, 200, up);
    },
  };

  return [list, one];
}

import type { Interceptor } from '../../app';
import type { GatewayQueue } from '../../queue';
import type { FailedPrompt, HeldPrompt } from '../../queue/store';
import type { Worker } from '../../queue/worker';
import { callUpstream, type Upstream, type UpstreamResponse } from '../upstream';
import type { FileRef } from './paths';
import type { IsolationContext } from './context';
import { viewPromptTuple } from './entries';
import { isObj, seesAll, sendJson, sendUpstream, upstreamHeaders, upstreamJson, upstreamUrl } from './http';

/** The parts of a held prompt's body /queue and /api/jobs show. */
function parts(p: HeldPrompt): { prompt: unknown; extra: Record<string, unknown> } {
  const body = JSON.parse(p.body) as Record<string, unknown>;
  const extra = isObj(body.extra_data) ? { ...body.extra_data } : {};
  extra.client_id = p.upstreamClientId;
  return { prompt: body.prompt ?? {}, extra };
}

/** A held prompt as a ComfyUI queue tuple `[number, id, prompt, extra_data, outputs]` fit for `viewer`. */
export function heldTuple(p: HeldPrompt, number: number, viewer: string, iso: IsolationContext): unknown[] {
  const { prompt, extra } = parts(p);
  return viewPromptTuple([number, p.id, prompt, extra, []], viewer, iso.ledger) as unknown[];
}

/** A held prompt as an /api/jobs summary: pending, like ComfyUI's own waiting jobs. */
export function heldJob(p: HeldPrompt, number: number): Record<string, unknown> {
  const { extra } = parts(p);
  const pnginfo = isObj(extra.extra_pnginfo) ? extra.extra_pnginfo : {};
  const wf = isObj(pnginfo.workflow) ? pnginfo.workflow : {};
  return {
    id: p.id,
    status: 'pending',
    priority: number,
    create_time: p.at,
    execution_start_time: null,
    execution_end_time: null,
    outputs_count: 0,
    preview_output: null,
    workflow_id: typeof wf.id === 'string' ? wf.id : null,
  };
}

/** A held prompt ComfyUI refused at release, as a /history entry with an error status. */
export function failedEntry(f: FailedPrompt, viewer: string, iso: IsolationContext): Record<string, unknown> {
  const e = isObj(f.error.error) ? f.error.error : {};
  return {
    prompt: viewPromptTuple(f.prompt, viewer, iso.ledger),
    outputs: {},
    status: {
      status_str: 'error',
      completed: false,
      messages: [
        ['execution_start', { prompt_id: f.id, timestamp: f.at }],
        [
          'execution_error',
          {
            prompt_id: f.id,
            node_id: null,
            node_type: null,
            executed: [],
            exception_message: String(e.message ?? 'ComfyUI refused the prompt'),
            exception_type: 'PromptRefused',
            traceback: [],
            current_inputs: {},
            current_outputs: {},
            node_errors: f.error.node_errors ?? {},
            timestamp: f.at,
          },
        ],
      ],
    },
    meta: {},
  };
}

/** Lends the queue how isolation sends a held prompt: its ids are tracked like any prompt sent from a request. */
export function bindQueue(iso: IsolationContext, queue: GatewayQueue): void {
  queue.bind({
    toUpstream: (id) => iso.promptIds.toUpstream(id),
    toClient: (u) => iso.promptIds.toClient(u),
    ownerOf: (id) => iso.ledger.owner(id),
    placed(id, w) {
      // The first worker is the default: only the others are written down (or the first, over another worker a
      // prompt taken back from a waiting slot was on before).
      if (queue.workers.all()[0] !== w || iso.ledger.get(id)?.worker) iso.ledger.setWorker(id, w.name);
    },
    ensureOwned(p, username) {
      if (!iso.ledger.get(p.id))
        iso.ledger.add({ id: p.id, owner: username, clientId: p.clientId, upstreamClientId: p.upstreamClientId, at: p.at });
    },
    async send(w: Worker, p: HeldPrompt): Promise<UpstreamResponse> {
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (p.comfyUser) headers['comfy-user'] = p.comfyUser;
      const settle = iso.promptIds.begin(p.upstreamClientId);
      try {
        const up = await callUpstream(w.upstream, 'POST', '/prompt', headers, p.body);
        const answer = upstreamJson(up);
        const theirs = isObj(answer) ? answer.prompt_id : undefined;
        if (typeof theirs === 'string' && theirs) iso.promptIds.answered(p.id, theirs);
        return up;
      } finally {
        settle();
      }
    },
  });
}

/** GET /prompt: `exec_info.queue_remaining` is the caller's own count, held prompts included. */
export function promptInfoInterceptor(iso: IsolationContext): Interceptor {
  return {
    id: 'queue-prompt-info',
    routes: [{ path: '/prompt', methods: ['GET', 'HEAD'] }],
    async handle(req, res, ctx) {
      req.resume();
      const p = ctx.principal!;
      const up = await callUpstream(iso.upstream, 'GET', upstreamUrl(ctx), upstreamHeaders(req, ctx, iso.cookieName, iso.upstream));
      const j = upstreamJson(up);
      if (!iso.queue || !isObj(j) || !isObj(j.exec_info)) return sendUpstream(req, res, up);
      const count = iso.queue.countFor(p.username, seesAll(p, iso.separate));
      sendJson(req, res, { ...j, exec_info: { ...j.exec_info, queue_remaining: count } }, 200, up);
    },
  };
}

/** The ComfyUI worker that ran a prompt (the gateway's upstream unless the ledger names another). */
export function upstreamOfPrompt(iso: IsolationContext, id: string): Upstream {
  return iso.queue?.workers.byName(iso.ledger.get(id)?.worker)?.upstream ?? iso.upstream;
}

/** The ComfyUI worker that made a file (the gateway's upstream unless a prompt on another worker made it). */
export function upstreamOfFile(iso: IsolationContext, f: FileRef): Upstream {
  return iso.queue?.workers.byName(iso.ledger.workerOfFile(f))?.upstream ?? iso.upstream;
}

import type { Principal } from '../auth/principal';
import type { Logger } from '../log';
import type { Upstream } from '../proxy/upstream';
import type { WsHooks } from '../proxy/ws';
import type { AccountKeys } from '../users/types';
import type { LimitSet } from './config';
import { createLimits, dayOf, type Limits } from './limits';
import { createDispatcher, type Outcome, type QueueIo, type Submission } from './queue';
import type { QueueNotices } from './prompts';
import { createScheduler, type Policy } from './scheduler';
import type { SharedQueue } from './pgReplicas';
import { followShared } from './pgFollow';
import type { FailedPrompt, HeldPrompt, QueueStore } from './store';
import { usageOfHistory } from './usage';
import type { Worker } from './worker';
import { createWorkers, type WorkerSpec, type Workers } from './workers';
import { createQueueWsHooks } from './ws';

export type { QueueIo, Submission, Outcome };

/** The gateway's queue (DESIGN §12) as the rest of the gateway uses it. */
export interface GatewayQueue {
  workers: Workers;
  limits: Limits;
  keys: AccountKeys;
  /** lent by isolation once it is built: how prompts are sent and ids translated */
  bind(io: QueueIo): void;
  /** 429 when the caller may not queue one more prompt */
  admit(p: Principal): void;
  submit(s: Submission, direct: (w: Worker) => Promise<import('../proxy/upstream').UpstreamResponse>): Promise<Outcome>;
  /** held prompts in release order (the viewer's own, or everyone's when null) */
  held(viewer: string | null): HeldPrompt[];
  /** the count a user's queue shows: held and on workers (everyone's when `all`) */
  countFor(username: string, all: boolean): number;
  /** removes held prompts the caller may remove; returns those removed */
  cancel(ids: string[], viewer: string | null): Promise<string[]>;
  /** held prompts refused by ComfyUI at release (the viewer's, or everyone's when null) */
  failed(viewer: string | null): FailedPrompt[];
  /** admin: puts the listed held prompts first, in this order */
  reorder(ids: string[]): Promise<void>;
  setLimits(username: string, l: LimitSet | null): Promise<void>;
  wsHooks: WsHooks;
  close(): Promise<void>;
}

/** Builds the queue from its store (loaded here), the workers and the scheduler settings. */
export async function createGatewayQueue(deps: {
  store: QueueStore;
  specs: WorkerSpec[];
  primary: Upstream;
  headerTimeoutMs: number;
  keys: AccountKeys;
  logger: Logger;
  scheduler: { policy: Policy; weights: Partial<Record<'admin' | 'user', number>>; coalesce_ms: number };
  limits: Partial<Record<'admin' | 'user', LimitSet>>;
  pollMs?: number;
  /** replicas on PostgreSQL: one releaser, the queue followed through the change feed */
  shared?: SharedQueue;
}): Promise<GatewayQueue> {
  const { store, keys, logger } = deps;
  const state = await store.load();
  const limits = createLimits({ roles: deps.limits, overrides: state.limits, usage: state.usage });
  // (replicas: the releaser keeps where its round robin stands in PostgreSQL, for the next releaser)
  const scheduler = createScheduler({
    ...deps.scheduler,
    onServed: deps.shared ? () => deps.shared!.saveFair(scheduler.fair()) : undefined,
  });
  const failed = new Map(state.failed.map((f) => [f.id, f]));
  let io: QueueIo | null = null;
  const countOf = (owner: string | null) => {
    let n = owner === null ? scheduler.size : scheduler.countOf(owner);
    for (const w of workers.all()) for (const f of w.flights.values()) if (owner === null || f.owner === owner) n++;
    return n;
  };
  const ws = createQueueWsHooks({
    countFor: (s) => countOf(s.principal.role === 'admin' ? null : keys.keyOf(s.principal.username)),
    onStatus: () => workers.all().forEach((w) => w.refreshSoon()),
  });
  const workers: Workers = createWorkers({
    specs: deps.specs,
    primary: deps.primary,
    headerTimeoutMs: deps.headerTimeoutMs,
    ids: () =>
      io && {
        toClient: (u: string) => io!.toClient(u),
        ownerKey: (id: string) => {
          const name = io!.ownerOf(id);
          return name === undefined ? undefined : keys.keyOf(name);
        },
      },
    logger,
    pollMs: deps.pollMs,
    events: {
      changed: () => dispatcher.pump(),
      finished: (w, f) => {
        dispatcher.finished(w, f);
        if (f.owner) void account(w, f.id, f.owner);
      },
      down: (w, lost) => void dispatcher.lost(w, lost),
    },
  });
  // what users hear of the queue: counts on their sockets, and a held prompt ComfyUI refused at release
  const notices: QueueNotices = {
    counts: () => ws.pushCounts(),
    refused(f, p) {
      const name = keys.nameOf(p.owner);
      const e = f.error.error as Record<string, unknown> | undefined;
      if (name)
        ws.sendTo(name, p.clientId, {
          type: 'execution_error',
          data: {
            prompt_id: p.id,
            node_id: null,
            node_type: null,
            executed: [],
            exception_message: String(e?.message ?? 'ComfyUI refused the prompt'),
            exception_type: String(e?.type ?? '') === 'worker_down' ? 'WorkerDown' : 'PromptRefused',
            traceback: [],
            current_inputs: {},
            current_outputs: {},
            timestamp: f.at,
          },
        });
      ws.pushCounts();
    },
  };
  const dispatcher = createDispatcher({
    store,
    scheduler,
    limits,
    workers,
    keys,
    logger,
    coalesceMs: deps.scheduler.coalesce_ms,
    answerWaitMs: 2000,
    nextSeq: state.nextSeq,
    failed,
    releasing: deps.shared ? () => deps.shared!.releasing() : undefined,
    takeSeq: deps.shared ? () => deps.shared!.takeSeq() : undefined,
    answers: deps.shared?.answers,
    notices,
  });

  /** GPU-seconds and images of a finished prompt, from the worker's history of it. */
  async function account(w: Worker, id: string, owner: string): Promise<void> {
    try {
      const upId = io?.toUpstream(id) ?? id;
      const h = await w.upstream.json<Record<string, unknown>>('GET', `/history/${encodeURIComponent(upId)}`, { timeoutMs: 10_000 });
      const u = usageOfHistory(h[upId]);
      if (!u) return;
      const day = dayOf(u.endedAt);
      limits.add(owner, day, u);
      await store.apply({ op: 'usage', owner, day, prompts: 0, gpu_s: u.gpu_s, images: u.images });
    } catch (e) {
      logger.debug({ err: (e as Error).message, prompt: id }, 'queue: usage of a finished prompt not read');
    }
  }

  const mine = (viewer: string | null) => (p: { owner: string }) => viewer === null || p.owner === keys.keyOf(viewer);
  return {
    workers,
    limits,
    keys,
    bind(x) {
      io = x;
      dispatcher.restore(state.held);
      state.held = [];
      dispatcher.bind(x);
      if (deps.shared) followShared({ shared: deps.shared, scheduler, dispatcher, workers, limits, failed, keys, io: x, notices });
    },
    admit(p) {
      const owner = keys.keyOf(p.username);
      let waiting = scheduler.countOf(owner);
      for (const w of workers.all()) for (const f of w.flights.values()) if (f.owner === owner && !f.running) waiting++;
      limits.check(owner, p.role, { waiting, today: limits.today(owner) });
    },
    submit: (s, direct) => dispatcher.submit(s, direct),
    held: (viewer) => scheduler.order().filter(mine(viewer)),
    countFor: (username, all) => countOf(all ? null : keys.keyOf(username)),
    async cancel(ids, viewer) {
      const allowed = ids.filter((id) => {
        const p = scheduler.get(id) ?? dispatcher.taking(id);
        return p && mine(viewer)(p);
      });
      return dispatcher.cancel(allowed);
    },
    failed: (viewer) => [...failed.values()].filter(mine(viewer)),
    async reorder(ids) {
      scheduler.reorder(ids);
      // persisted as the new arrival numbers: a restart keeps the admin's order
      for (const id of ids) {
        const p = scheduler.get(id);
        if (!p) continue;
        await store.apply({ op: 'drop', ids: [id] });
        await store.apply({ op: 'hold', prompt: p });
      }
      ws.pushCounts();
    },
    async setLimits(username, l) {
      const owner = keys.keyOf(username);
      limits.setOverride(owner, l);
      await store.apply({ op: 'limits', owner, limits: l });
      dispatcher.pump();
    },
    wsHooks: ws.hooks,
    async close() {
      dispatcher.close();
      await deps.shared?.close();
      workers.close();
      await store.close();
    },
  };
}

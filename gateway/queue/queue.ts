import type { Logger } from '../log';
import type { UpstreamResponse } from '../proxy/upstream';
import type { AccountKeys } from '../users/types';
import { wouldLead, type Answers } from './answers';
import { dayOf, type Limits } from './limits';
import { workerLoss } from './lost';
import { createRecall } from './recall';
import type { Scheduler, Turn } from './scheduler';
import { createWaiters, failedPrompt, heldOf, refusalOf, type Outcome, type QueueNotices, type Submission } from './prompts';
export type { Outcome, Submission } from './prompts';
import type { FailedPrompt, HeldPrompt, QueueStore } from './store';
import type { Flight, Worker } from './worker';
import type { Workers } from './workers';

/** The longest a worker's waiting slot stays open for more arrivals after its last prompt was sent. */
const COALESCE_CAP_MS = 1000;

/** What isolation lends the queue: how a prompt is sent, and the id translation. */
export interface QueueIo {
  send(w: Worker, p: HeldPrompt): Promise<UpstreamResponse>;
  toUpstream(id: string): string;
  toClient(upstreamId: string): string;
  /** the owner's username of a gateway prompt id (the ledger) */
  ownerOf(id: string): string | undefined;
  /** ComfyUI on worker `w` accepted the prompt (its events, files and history are that worker's) */
  placed(id: string, w: Worker): void;
  /** after a restart: the ledger must know the owner of a persisted prompt (its write may have been lost) */
  ensureOwned(p: HeldPrompt, username: string): void;
}

/**
 * The dispatcher: a prompt goes straight to a worker only when one is idle and nobody is waiting (ComfyUI's own
 * answer, node_errors included, reaches the client); otherwise it is persisted, held and answered at once. A
 * worker gets a second (waiting) prompt only `coalesceMs` after its last one, so users whose prompts arrive
 * together are ordered together; it never holds more than one running and one waiting.
 */
export function createDispatcher(deps: {
  store: QueueStore;
  scheduler: Scheduler;
  limits: Limits;
  workers: Workers;
  keys: AccountKeys;
  logger: Logger;
  coalesceMs: number;
  /** how long past the coalescing window a submission waits for ComfyUI's answer to its release */
  answerWaitMs: number;
  nextSeq: number;
  notices: QueueNotices;
  failed: Map<string, FailedPrompt>;
  /** replicas: whether this one releases prompts (the others only hold them); always when alone */
  releasing?: () => boolean;
  /** replicas: the next seq/number from the shared store, unique across replicas */
  takeSeq?: () => Promise<number>;
  /** replicas: ComfyUI's answers passed between the releaser and the replica where the submitter waits */
  answers?: Answers;
}) {
  const { store, scheduler, workers, keys, logger } = deps;
  let seq = deps.nextSeq;
  let io: QueueIo | null = null;
  let timer: NodeJS.Timeout | null = null;
  let lastArrival = 0;
  const releasing = deps.releasing ?? (() => true);
  // Prompts on workers, kept until they leave: a worker going down gives its waiting ones back to the queue.
  const sent = new Map<string, HeldPrompt>();
  const recall = createRecall({ scheduler, store, logger, sent, notices: deps.notices, io: () => io });

  const runningOf = (owner: string) =>
    workers.all().reduce((n, w) => n + [...w.flights.values()].filter((f) => f.owner === owner).length, 0);
  const may = (owner: string) => {
    const role = scheduler.peek((o) => o === owner)?.role ?? 'user';
    const max = deps.limits.effective(owner, role).max_running;
    return max === null || runningOf(owner) < max;
  };

  /** One more prompt of the day for the owner (limits now, the durable usage row soon). */
  const counted = (owner: string, at: number) => {
    deps.limits.add(owner, dayOf(at), { prompts: 1 });
    void store.apply({ op: 'usage', owner, day: dayOf(at), prompts: 1, gpu_s: 0, images: 0 }).catch(() => undefined);
  };

  /** When the worker can take one more: 0 = now, n = in n ms, null = full or down. */
  function roomIn(w: Worker): number | null {
    if (!w.up || !w.known) return null;
    if (w.flights.size === 0) return 0;
    if (w.flights.size >= 2) return null;
    // The waiting slot is filled once arrivals have paused for the window (a burst is ordered as a whole), but
    // never later than COALESCE_CAP_MS after the worker's last prompt, so steady arrivals cannot idle the GPU.
    const quiet = Math.max(w.lastSentAt, lastArrival) + deps.coalesceMs;
    return Math.max(0, Math.min(quiet, w.lastSentAt + COALESCE_CAP_MS) - Date.now());
  }

  function pump(): void {
    if (!io || !releasing()) return;
    for (;;) {
      let soonest = Infinity;
      const ready = workers.all().filter((w) => {
        const r = roomIn(w);
        if (r !== null && r > 0) soonest = Math.min(soonest, r);
        return r === 0;
      });
      if (!ready.length || !scheduler.size) {
        // every worker full: a prompt in a waiting slot may be taken back for an earlier turn
        if (soonest === Infinity) recall.check(may);
        if (soonest < Infinity && scheduler.size && !timer) {
          timer = setTimeout(() => {
            timer = null;
            pump();
          }, soonest + 1);
          timer.unref();
        }
        return;
      }
      const p = scheduler.peek(may);
      if (!p) return;
      const w = workers.pick(ready, p);
      if (!w) return;
      scheduler.remove(p.id);
      if (!keys.nameOf(p.owner) || workers.all().some((x) => x.flights.has(p.id))) {
        // the account was deleted while its prompt waited, or ComfyUI already has it (sent just before a restart)
        void store.apply({ op: 'drop', ids: [p.id] });
        continue;
      }
      const turn = scheduler.served(p.owner, p.role);
      w.track(p.id, p.owner);
      void release(w, p, turn);
    }
  }

  // Submissions waiting for their own release (the worker had room): ComfyUI's answer goes to them verbatim.
  const { waiters, waitRelease } = createWaiters();
  /** A held prompt's answer comes soon: it is on its way to a worker, or next with a worker that has room. */
  const answersSoon = (id: string) =>
    !scheduler.get(id) || (workers.all().some((w) => w.up && w.flights.size < 2) && scheduler.peek(may)?.id === id);

  async function release(w: Worker, p: HeldPrompt, turn: Turn): Promise<void> {
    let up: UpstreamResponse;
    try {
      up = await io!.send(w, p);
    } catch (e) {
      // Not reached: it goes back to its place and waits for a worker.
      logger.warn({ err: (e as Error).message, prompt: p.id, worker: w.name }, 'queue: release failed; the prompt waits again');
      w.untrack(p.id);
      scheduler.add(p);
      w.refreshSoon();
      return;
    }
    const waiter = waiters.get(p.id);
    // its submitter waits on another replica: ComfyUI's answer, a refusal too, goes there through PostgreSQL (answers.ts)
    const relay = waiter ? undefined : deps.answers?.relay(p);
    if (up.status === 200) {
      w.refreshSoon();
      workers.sentTo(p.id, w);
      sent.set(p.id, p);
      io!.placed(p.id, w);
      if (!(relay && (await relay(up))))
        await store.apply({ op: 'drop', ids: [p.id] }).catch((e) => logger.error({ err: (e as Error).message }, 'queue: store failed'));
      waiter?.(up);
      recall.placed(w, p, turn);
      pump();
      return;
    }
    w.untrack(p.id);
    if (relay && (await relay(up))) return void (deps.notices.counts(), pump());
    if (waiter) {
      // The client is still on the line: ComfyUI's refusal (node_errors) is its answer, as without the queue.
      await store.apply({ op: 'drop', ids: [p.id] }).catch(() => undefined);
      waiter(up);
      deps.notices.counts();
      pump();
      return;
    }
    const f = failedPrompt(p, refusalOf(up));
    logger.info({ prompt: p.id, worker: w.name, status: up.status }, 'queue: ComfyUI refused a held prompt');
    await fail(p, f);
  }

  async function fail(p: HeldPrompt, f: FailedPrompt): Promise<void> {
    deps.failed.set(p.id, f);
    await store.apply({ op: 'failed', entry: f }).catch(() => undefined);
    deps.notices.refused(f, p);
    pump();
  }

  const lost = workerLoss({ sent, recall, store, scheduler, logger, notices: deps.notices, fail, pump });

  return {
    bind(x: QueueIo) {
      io = x;
      pump();
    },
    get io() {
      return io;
    },
    pump,
    runningOf,
    answersSoon,
    /** Re-holds prompts after a restart (and tells the ledger whose they are). */
    restore(held: HeldPrompt[]) {
      for (const p of held.sort((a, b) => a.seq - b.seq)) {
        const name = keys.nameOf(p.owner);
        if (!name) continue;
        io?.ensureOwned(p, name);
        scheduler.add(p);
      }
    },
    /** Sends at once when a worker is idle and nobody waits; otherwise persists and holds. */
    async submit(s: Submission, direct: (w: Worker) => Promise<UpstreamResponse>): Promise<Outcome> {
      const owner = keys.keyOf(s.username);
      const now = Date.now();
      const idleNow = () => {
        if (scheduler.size !== 0) return undefined;
        const free = workers.all().filter((w) => w.up && w.known && w.flights.size === 0);
        if (free.length) return workers.pick(free, { owner, body: s.body });
        // One worker whose waiting slot is open: a release would send this prompt there at once, and no read of its
        // queue could send it anywhere else, so it goes now (no read, no journal write on the way).
        const up = workers.all().filter((w) => w.up);
        const max = deps.limits.effective(owner, s.role).max_running;
        return up.length === 1 && roomIn(up[0]) === 0 && (max === null || runningOf(owner) < max) ? up[0] : undefined;
      };
      // Nobody waits but every worker looks busy: what the gateway knows may be a moment old (a prompt that just
      // ended), so it asks before deciding rather than holding a prompt a free worker could start now.
      if (releasing() && !idleNow() && scheduler.size === 0) await Promise.all(workers.all().map((w) => w.up && w.refreshNow()));
      // (a replica that does not release holds every prompt: one releaser keeps one fair order)
      const idle = releasing() ? idleNow() : undefined;
      const anyUp = workers.all().some((w) => w.up);
      if (idle || !anyUp) {
        // (nobody up at all: ComfyUI's own failure, 502, is the answer and nothing is queued)
        const w = idle ?? workers.all()[0];
        w.track(s.id, owner);
        const turn = scheduler.served(owner, s.role);
        let up: UpstreamResponse;
        try {
          up = await direct(w);
        } catch (e) {
          w.untrack(s.id);
          throw e;
        }
        if (up.status !== 200) w.untrack(s.id);
        else {
          const held = heldOf(s, owner, now, seq++);
          sent.set(s.id, held);
          recall.placed(w, held, turn); // a waiting slot filled at once can be taken back like a release
          workers.sentTo(s.id, w);
          io?.placed(s.id, w);
          counted(owner, now);
          if (w.flights.size > 1) w.refreshSoon(); // (sent to an idle worker it runs: the regular poll follows it)
        }
        return { held: false, up };
      }
      lastArrival = now;
      const n = deps.takeSeq ? await deps.takeSeq() : seq++;
      const p = heldOf(s, owner, now, n);
      // Not the releaser: when this prompt would lead, the releaser passes ComfyUI's answer on (answers.ts), same bound.
      const asked =
        !releasing() && deps.answers && wouldLead(scheduler, p) ? deps.answers.ask(p, COALESCE_CAP_MS + deps.answerWaitMs) : null;
      // Durable before the answer: a restart releases it later.
      await store.apply({ op: 'hold', prompt: p });
      counted(owner, now);
      scheduler.add(p);
      deps.notices.counts();
      pump();
      // A worker has room and this prompt is next (or already on its way): the answer waits for ComfyUI's, so its
      // validation errors reach the client as they would without the gateway. Otherwise the answer is at once.
      const up = await (asked ?? (releasing() && answersSoon(p.id) ? waitRelease(p.id, COALESCE_CAP_MS + deps.answerWaitMs) : null));
      if (up) return { held: false, up };
      return { held: true, number: n };
    },
    /** Removes held prompts (delete, clear, interrupt of a held prompt); returns the ids removed. */
    async cancel(ids: string[]): Promise<string[]> {
      const gone = ids.filter((id) => scheduler.remove(id) || recall.cancel(id));
      if (gone.length) {
        await store.apply({ op: 'drop', ids: gone });
        deps.notices.counts();
      }
      return gone;
    },
    /** a flight ended on a worker */
    finished(_w: Worker, f: Flight) {
      sent.delete(f.id);
      recall.forget(f.id);
      pump();
    },
    lost,
    taking: (id: string) => recall.taking(id), // a prompt being taken back from a waiting slot (cancellable)
    close() {
      if (timer) clearTimeout(timer);
    },
  };
}

/** The dispatcher's interface. */
export type Dispatcher = ReturnType<typeof createDispatcher>;

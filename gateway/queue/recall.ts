import type { Logger } from '../log';
import { callUpstream } from '../proxy/upstream';
import type { QueueNotices } from './prompts';
import type { QueueIo } from './queue';
import type { Scheduler, Turn } from './scheduler';
import type { HeldPrompt, QueueStore } from './store';
import type { Worker } from './worker';

/** A prompt released into a worker's waiting slot that may still be taken back. */
interface Placed {
  w: Worker;
  p: HeldPrompt;
  turn: Turn;
}

/**
 * Takes a prompt back from a worker's waiting slot when another user's turn comes earlier (prompts that arrived
 * after it was released, e.g. when a burst of posts outlasts the coalescing window): POST /queue {"delete"} on that
 * worker, then a read of its queue and, if the prompt is gone, of its history. Gone and not run: it is held again
 * at its place and the earlier turn takes the slot. Started (or already done) meanwhile: it stays, nothing runs
 * twice. It is journaled as held before the delete, so a crash in between finds it either held or on the worker
 * (a restart drops the held copy of a prompt a worker already has).
 */
export function createRecall(deps: {
  scheduler: Scheduler;
  store: QueueStore;
  logger: Logger;
  /** the dispatcher's prompts on workers: one taken back is held again, not on a worker */
  sent: Map<string, HeldPrompt>;
  notices: QueueNotices;
  io: () => Pick<QueueIo, 'toUpstream'> | null;
}) {
  const { scheduler, store, logger } = deps;
  const placed = new Map<string, Placed>();
  const busy = new Set<Worker>();
  // prompts being taken back (a delete or clear of one meanwhile must not be undone by holding it again)
  const taking = new Map<string, { p: HeldPrompt; cancelled: boolean }>();

  /** Reads whether ComfyUI still has the prompt (queued, running or in its history). */
  async function stillThere(w: Worker, upId: string): Promise<boolean> {
    const q = await w.upstream.json<{ queue_running?: unknown[]; queue_pending?: unknown[] }>('GET', '/queue', { timeoutMs: 5000 });
    const listed = [...(q.queue_running ?? []), ...(q.queue_pending ?? [])].some((e) => Array.isArray(e) && e[1] === upId);
    if (listed) return true;
    const h = await w.upstream.json<Record<string, unknown>>('GET', `/history/${encodeURIComponent(upId)}`, { timeoutMs: 5000 });
    return Object.prototype.hasOwnProperty.call(h, upId);
  }

  async function takeBack(x: Placed): Promise<void> {
    const { w, p } = x;
    const f = w.flights.get(p.id);
    if (!f) return;
    busy.add(w);
    f.recalling = true;
    placed.delete(p.id);
    const t = { p, cancelled: false };
    taking.set(p.id, t);
    let gone = false;
    try {
      await store.apply({ op: 'hold', prompt: p });
      const upId = deps.io()?.toUpstream(p.id) ?? p.id;
      const r = await callUpstream(
        w.upstream,
        'POST',
        '/queue',
        { 'content-type': 'application/json' },
        JSON.stringify({ delete: [upId] }),
      );
      gone = r.status === 200 && !(await stillThere(w, upId));
    } catch (e) {
      logger.debug({ err: (e as Error).message, prompt: p.id, worker: w.name }, 'queue: taking a waiting prompt back failed');
    } finally {
      busy.delete(w);
      taking.delete(p.id);
    }
    f.recalling = false;
    // the worker went down meanwhile: its waiting prompts, this one included, were given back to the queue already
    if (w.flights.get(p.id) !== f) return;
    if (!gone) {
      // started (or could not be asked): it stays on the worker; the held copy goes
      await store.apply({ op: 'drop', ids: [p.id] }).catch(() => undefined);
      w.refreshSoon();
      return;
    }
    logger.info({ prompt: p.id, worker: w.name }, 'queue: a waiting prompt was taken back for an earlier turn');
    deps.sent.delete(p.id);
    // deleted by its owner (or an admin) while it was being taken back: it stays deleted (its journal entry went)
    if (!t.cancelled) scheduler.giveBack(p, x.turn);
    deps.notices.counts();
    // the slot is free: the worker's change lets the dispatcher release the earlier turn
    w.untrack(p.id);
  }

  return {
    /** a released prompt was accepted by ComfyUI at `turn` */
    placed(w: Worker, p: HeldPrompt, turn: Turn) {
      placed.set(p.id, { w, p, turn });
    },
    /** a prompt being taken back (its owner may delete it like a held one), else undefined */
    taking: (id: string) => taking.get(id)?.p,
    /** a delete or clear reached a prompt being taken back: it is not held again; false when none is */
    cancel(id: string): boolean {
      const t = taking.get(id);
      if (t) t.cancelled = true;
      return !!t;
    },
    /** the prompt left its worker (finished, lost, deleted) */
    forget(id: string) {
      placed.delete(id);
    },
    /** Every full worker: takes back its waiting prompt if a held one's turn comes before it. */
    check(may: (owner: string) => boolean) {
      if (!scheduler.size) return;
      for (const x of placed.values()) {
        const f = x.w.flights.get(x.p.id);
        if (!f || f.running) {
          placed.delete(x.p.id); // running (or gone): never taken back
          continue;
        }
        // only from a full worker (one with a free slot gets the earlier turn anyway), one at a time per worker
        if (x.w.flights.size < 2 || busy.has(x.w) || !x.w.up || f.recalling) continue;
        if (scheduler.overtaken(x.p, x.turn, may)) void takeBack(x);
      }
    },
  };
}

/** The recall's interface. */
export type Recall = ReturnType<typeof createRecall>;

import type { AccountKeys } from '../users/types';
import type { Limits } from './limits';
import type { QueueNotices } from './prompts';
import type { SharedQueue } from './pgReplicas';
import type { Dispatcher, QueueIo } from './queue';
import type { Scheduler } from './scheduler';
import type { FailedPrompt, HeldPrompt } from './store';
import type { Workers } from './workers';

/**
 * Keeps this replica's view of the shared queue (held prompts, refusals, limits, usage) equal to PostgreSQL's, from
 * the change feed: the releaser needs every replica's prompts to keep one fair order; the others need the queue to
 * answer /queue, count limits and push queue counts to their sockets.
 */
export function followShared(deps: {
  shared: SharedQueue;
  scheduler: Scheduler;
  dispatcher: Dispatcher;
  workers: Workers;
  limits: Limits;
  failed: Map<string, FailedPrompt>;
  keys: AccountKeys;
  io: QueueIo;
  notices: QueueNotices;
}): void {
  const { scheduler, dispatcher, workers, keys, io } = deps;
  const onWorker = (id: string) => workers.all().some((w) => w.flights.has(id));
  // Prompts whose submitter waited for ComfyUI's answer, for a minute after they left the held ones: a refusal
  // nobody took is recorded later (answers.ts), and the owner's sockets here must still hear of it.
  const answered = new Map<string, { p: HeldPrompt; at: number }>();
  const remember = (p: HeldPrompt) => {
    const now = Date.now();
    for (const [id, a] of answered) if (a.at < now - 60_000) answered.delete(id);
    answered.set(p.id, { p, at: now });
  };

  /** Puts a held prompt (new, or moved by a reorder) in its place; false when it is not to be held here. */
  function place(p: HeldPrompt): boolean {
    const cur = scheduler.get(p.id);
    if (cur && cur.seq === p.seq && cur.front === p.front) return false;
    if (cur) scheduler.remove(p.id);
    // already released by this replica (the row leaves once ComfyUI accepted it), or an account deleted since
    if (onWorker(p.id)) return false;
    const name = keys.nameOf(p.owner);
    if (!name) return false;
    io.ensureOwned(p, name);
    scheduler.add(p);
    return true;
  }

  deps.shared.start({
    held(id, p) {
      const placed = p ? place(p) : false;
      const gone = p ? undefined : scheduler.remove(id);
      if (gone?.answerTo) remember(gone);
      deps.notices.counts();
      dispatcher.pump();
      // The releaser: a submitter waiting elsewhere for a prompt that is not released at once is answered "held" —
      // after asking the workers, as for its own submissions (what it knows of them may be a moment old).
      const soon = () => !((scheduler.get(id)?.answerTo?.until ?? 0) > Date.now()) || dispatcher.answersSoon(id);
      if (!placed || !deps.shared.releasing() || soon()) return;
      void Promise.all(workers.all().map((w) => (w.up ? w.refreshNow() : undefined))).then(() => {
        dispatcher.pump();
        if (!soon()) deps.shared.answers.later(scheduler.get(id)!);
      });
    },
    failed(id, f) {
      if (!f) return void deps.failed.delete(id);
      // refused at release by the releaser: the owner's sockets on this replica hear it too (the prompt is still
      // in this replica's view: its removal is notified after the refusal)
      const p = scheduler.get(id) ?? answered.get(id)?.p;
      const fresh = !deps.failed.has(id);
      deps.failed.set(id, f);
      if (p && fresh) deps.notices.refused(f, p);
    },
    limits(owner, l) {
      deps.limits.setOverride(owner, l);
      dispatcher.pump();
    },
    usage(row) {
      // the row is the total: add what this replica has not counted yet
      const cur = deps.limits.rows(row.day, row.day).find((r) => r.owner === row.owner);
      deps.limits.add(row.owner, row.day, {
        prompts: row.prompts - (cur?.prompts ?? 0),
        gpu_s: row.gpu_s - (cur?.gpu_s ?? 0),
        images: row.images - (cur?.images ?? 0),
      });
    },
    resync(held) {
      const ids = new Set(held.map((p) => p.id));
      for (const p of scheduler.order()) if (!ids.has(p.id)) scheduler.remove(p.id);
      for (const p of [...held].sort((a, b) => a.seq - b.seq)) place(p);
      deps.notices.counts();
    },
    async releasing() {
      // what the last releaser sent is on the workers: it fills their slots and is never sent again
      await Promise.all(workers.all().map((w) => w.adopt()));
    },
    fair: (s) => scheduler.restoreFair(s),
    pump: () => dispatcher.pump(),
  });
  // the releaser records a refusal nobody took: the owner's sockets on this replica hear it (the others: `failed`)
  deps.shared.answers.start((f, p) => {
    deps.failed.set(f.id, f);
    deps.notices.refused(f, p);
  });
}

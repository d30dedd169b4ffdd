import type { Logger } from '../log';
import { failedPrompt, refusalOf, type QueueNotices } from './prompts';
import type { Recall } from './recall';
import type { Scheduler } from './scheduler';
import type { FailedPrompt, HeldPrompt, QueueStore } from './store';
import type { Flight, Worker } from './worker';

/**
 * What the dispatcher does when a worker stops answering: its running prompt failed there (its owner hears an
 * execution_error naming the worker), its waiting ones go back to the gateway queue and wait for another worker.
 */
export function workerLoss(deps: {
  sent: Map<string, HeldPrompt>;
  recall: Pick<Recall, 'forget'>;
  store: QueueStore;
  scheduler: Scheduler;
  logger: Logger;
  notices: QueueNotices;
  fail: (p: HeldPrompt, f: FailedPrompt) => Promise<void>;
  pump: () => void;
}) {
  const { sent, store, scheduler } = deps;
  return async function lost(w: Worker, flights: Flight[]): Promise<void> {
    for (const fl of flights) {
      deps.recall.forget(fl.id);
      const p = sent.get(fl.id);
      sent.delete(fl.id);
      if (!p) continue;
      if (fl.running) {
        deps.logger.warn({ prompt: p.id, worker: w.name }, 'queue: a running prompt was lost with its worker');
        await deps.fail(p, failedPrompt(p, refusalOf(null, `worker ${w.name} went down while running this prompt`, 'worker_down')));
      } else {
        await store.apply({ op: 'hold', prompt: p }).catch(() => undefined);
        scheduler.add(p);
      }
    }
    deps.notices.counts();
    deps.pump();
  };
}

import type { OutgoingHttpHeaders } from 'node:http';
import { errors } from '../../errors';
import type { GatewayQueue } from '../../queue';
import type { Logger } from '../../log';
import { callUpstream, type Upstream, type UpstreamResponse } from '../upstream';

/** One worker's answer to a request the gateway asked every worker. */
export interface WorkerAnswer {
  name: string;
  upstream: Upstream;
  res: UpstreamResponse;
}

/** Asks every ComfyUI worker the same thing, for the listings and clears that span all of them. */
export interface WorkerReads {
  /** more than one worker: listings must be merged */
  readonly many: boolean;
  /** the workers' upstreams, the first (the configured `upstream`) first */
  upstreams(): { name: string; upstream: Upstream }[];
  /**
   * Sends the same request to every worker at once. A worker that is down or does not answer is left out (logged
   * once per outage) so one dead GPU box does not fail the listing; with no worker answering, 502 as with one.
   */
  each(method: string, path: string, headers: OutgoingHttpHeaders, body?: Buffer | string): Promise<WorkerAnswer[]>;
}

/** Builds the fan-out over the queue's workers (just the one upstream without a queue). */
export function createWorkerReads(deps: { primary: Upstream; queue?: GatewayQueue; logger: Logger }): WorkerReads {
  const silent = new Set<string>(); // workers whose outage was already logged
  const upstreams = () => {
    const all = deps.queue?.workers.all() ?? [];
    if (all.length <= 1) return [{ name: all[0]?.name ?? 'upstream', upstream: deps.primary }];
    return all.map((w) => ({ name: w.name, upstream: w.upstream }));
  };
  return {
    get many() {
      return (deps.queue?.workers.all().length ?? 0) > 1;
    },
    upstreams,
    async each(method, path, headers, body) {
      const list = upstreams();
      if (list.length === 1) return [{ ...list[0], res: await callUpstream(list[0].upstream, method, path, headers, body) }];
      const down = new Set(
        deps
          .queue!.workers.all()
          .filter((w) => !w.up)
          .map((w) => w.name),
      );
      const answers = await Promise.all(
        list.map(async (w): Promise<WorkerAnswer | null> => {
          if (down.has(w.name)) return null;
          try {
            const res = await callUpstream(w.upstream, method, path, headers, body);
            silent.delete(w.name);
            return { ...w, res };
          } catch (e) {
            if (!silent.has(w.name)) {
              silent.add(w.name);
              deps.logger.warn(
                { worker: w.name, err: (e as Error).message },
                'a worker did not answer: its part of the listing is missing',
              );
            }
            return null;
          }
        }),
      );
      const got = answers.filter((a): a is WorkerAnswer => a !== null);
      if (!got.length) throw errors.upstreamUnavailable();
      return got;
    },
  };
}

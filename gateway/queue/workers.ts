import type { Logger } from '../log';
import { createUpstream, type Upstream } from '../proxy/upstream';
import { openExtraUpstreams } from '../proxy/wsExtra';
import { fits, needsOf } from './caps';
import type { HeldPrompt } from './store';
import { createWorker, type IdMap, type Worker, type WorkerEvents } from './worker';

/** One configured worker. */
export interface WorkerSpec {
  url: string;
  name: string;
  weight: number;
  tags: string[];
}

/**
 * The seam between the gateway and its ComfyUI workers: which workers there are, which one takes a prompt, and
 * which one holds a prompt the gateway sent. The first worker is the configured `upstream` itself.
 */
export interface Workers {
  all(): Worker[];
  /** the worker for a prompt among those with room: the one that ran the owner's last prompt, else the least busy */
  pick(ready: Worker[], p: Pick<HeldPrompt, 'owner' | 'body'>): Worker | undefined;
  /** the worker a prompt was sent to (undefined when the gateway does not know it) */
  of(promptId: string): Worker | undefined;
  /** the worker of that name (undefined when none is configured so) */
  byName(name: string | undefined): Worker | undefined;
  /** records where a prompt went */
  sentTo(promptId: string, w: Worker): void;
  /**
   * Opens a WebSocket to each worker but the first (a relayed client socket's own upstream is the first worker's),
   * handing their frames to `deliver`; a worker down is tried again while the client stays. Returns the closer.
   */
  openSockets(pathAndQuery: string, headers: Record<string, string>, deliver: (data: Buffer, isBinary: boolean) => void): () => void;
  close(): void;
}

/** Builds the workers; the first one reuses the gateway's existing upstream client. */
export function createWorkers(deps: {
  specs: WorkerSpec[];
  primary: Upstream;
  headerTimeoutMs: number;
  ids: () => IdMap | null;
  logger: Logger;
  events: WorkerEvents;
  pollMs?: number;
}): Workers {
  const list = deps.specs.map((s, i) => {
    const upstream = i === 0 ? deps.primary : createUpstream(s.url, { headerTimeoutMs: deps.headerTimeoutMs });
    return createWorker({
      ...s,
      upstream,
      ids: deps.ids,
      logger: deps.logger,
      events: deps.events,
      pollMs: deps.pollMs,
      learnCaps: deps.specs.length > 1,
    });
  });
  // Follows reachability the proxy notices, so a worker coming back is tried at once.
  for (const w of list) w.upstream.onReachability(() => w.refreshSoon());
  const lastOf = new Map<string, Worker>();
  const where = new Map<string, Worker>();
  return {
    all: () => list,
    pick(ready, p) {
      if (list.length === 1) return ready[0];
      // Only workers with the prompt's node classes and models; when none has them, ComfyUI's refusal is the answer.
      const needs = needsOf(p.body);
      const able = list.filter((w) => fits(w.caps, needs));
      if (able.length) ready = ready.filter((w) => able.includes(w));
      const last = lastOf.get(p.owner);
      const w = last && ready.includes(last) ? last : [...ready].sort((a, b) => a.flights.size / a.weight - b.flights.size / b.weight)[0];
      if (w) lastOf.set(p.owner, w);
      return w;
    },
    of: (id) => where.get(id),
    byName: (name) => (name === undefined ? undefined : list.find((w) => w.name === name)),
    sentTo(id, w) {
      where.set(id, w);
      if (where.size > 20_000) where.delete(where.keys().next().value as string);
    },
    openSockets(pathAndQuery, headers, deliver) {
      if (list.length < 2) return () => undefined;
      return openExtraUpstreams(
        list.slice(1).map((w) => w.upstream.origin),
        pathAndQuery,
        headers,
        deliver,
      );
    },
    close() {
      for (const [i, w] of list.entries()) {
        w.close();
        if (i > 0) w.upstream.close();
      }
    },
  };
}

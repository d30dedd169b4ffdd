import type { Logger } from '../log';
import type { Upstream } from '../proxy/upstream';
import { capsOf, type Caps } from './caps';

/** A prompt the gateway gave a worker and has not yet seen leave its queue. */
export interface Flight {
  id: string;
  /** owner's account key ('' when unknown: a prompt found on the worker at start-up) */
  owner: string;
  sentAt: number;
  running: boolean;
  /** being taken back from its waiting slot: not over when a read misses it (the recall decides) */
  recalling?: boolean;
}

/** How the worker's ids map to the gateway's (set once isolation is built). */
export interface IdMap {
  toClient(upstreamId: string): string;
  ownerKey(id: string): string | undefined;
}

/** One ComfyUI server the gateway releases prompts to, and what the gateway knows of its queue. */
export interface Worker {
  name: string;
  url: string;
  weight: number;
  tags: string[];
  upstream: Upstream;
  readonly up: boolean;
  /** its queue was read since it (re)joined: until then the gateway does not know what it holds */
  readonly known: boolean;
  readonly flights: ReadonlyMap<string, Flight>;
  /** its node classes and model files, once learned (several workers only) */
  readonly caps: Caps | null;
  /** when the last prompt was given to it (the waiting slot's coalescing window starts there) */
  readonly lastSentAt: number;
  /** a prompt is on its way to it: counted at once, before ComfyUI answers */
  track(id: string, owner: string): void;
  untrack(id: string): void;
  /** reads its queue now (resolves once a read that started after this call is in) */
  refreshNow(): Promise<void>;
  /** a read of its queue is on its way */
  readonly reading: boolean;
  /** ask its queue soon (a `status` frame passed, a prompt was sent) */
  refreshSoon(): void;
  /** reads its queue and takes every prompt there as a flight (a replica taking over releases from another) */
  adopt(): Promise<void>;
  close(): void;
}

/** What the worker tells the queue. */
export interface WorkerEvents {
  /** flights ended or room changed: the queue may release more */
  changed(w: Worker): void;
  /** a flight left the worker's queue (finished, failed, interrupted or deleted) */
  finished(w: Worker, f: Flight): void;
  /** the worker stopped answering: what it held is lost (waiting ones may be sent again) */
  down(w: Worker, lost: Flight[]): void;
}

/**
 * Follows one worker's queue by asking GET /queue: after every change the gateway sees (a `status` frame on any
 * relayed socket, a release) and every `pollMs` while it holds prompts of the gateway. A flight is over once a
 * queue read started after it was sent no longer lists it. The gateway keeps no socket of its own to ComfyUI.
 */
export function createWorker(deps: {
  name: string;
  url: string;
  weight?: number;
  tags?: string[];
  upstream: Upstream;
  ids: () => IdMap | null;
  logger: Logger;
  events: WorkerEvents;
  pollMs?: number;
  /** read its /object_info to route prompts by node classes and models */
  learnCaps?: boolean;
}): Worker {
  const pollMs = deps.pollMs ?? 250;
  const flights = new Map<string, Flight>();
  let up = true;
  let lastSentAt = 0;
  let asking = false;
  let failures = 0;
  let adopted = false;
  let closed = false;
  let timer: NodeJS.Timeout | null = null;

  function schedule(ms: number) {
    if (closed || timer) return;
    timer = setTimeout(() => {
      timer = null;
      void refresh();
    }, ms);
    timer.unref();
  }

  // Reads run one after another: a read asked for now starts after the one on its way (which may be older news).
  let chain: Promise<void> = Promise.resolve();
  const refresh = (): Promise<void> => (chain = chain.then(read));

  async function read(): Promise<void> {
    asking = true;
    const askedAt = Date.now();
    try {
      const q = await deps.upstream.json<{ queue_running?: unknown[]; queue_pending?: unknown[] }>('GET', '/queue', { timeoutMs: 5000 });
      const ids = deps.ids();
      const toClient = (u: string) => (ids ? ids.toClient(u) : u);
      const idOf = (e: unknown) => (Array.isArray(e) && typeof e[1] === 'string' ? toClient(e[1]) : null);
      const running = new Set((q.queue_running ?? []).map(idOf).filter((x): x is string => !!x));
      const present = new Set([...running, ...(q.queue_pending ?? []).map(idOf).filter((x): x is string => !!x)]);
      failures = 0;
      if (!up) up = true;
      if (!adopted) {
        // After a gateway restart: what the worker already has occupies its slots.
        adopted = true;
        if (deps.learnCaps) void learn();
        for (const id of present)
          if (!flights.has(id)) flights.set(id, { id, owner: ids?.ownerKey(id) ?? '', sentAt: askedAt, running: running.has(id) });
      }
      const ended: Flight[] = [];
      for (const f of flights.values()) {
        f.running = running.has(f.id);
        if (!present.has(f.id) && f.sentAt < askedAt && !f.recalling) ended.push(f);
      }
      for (const f of ended) flights.delete(f.id);
      // Sent after the read began: not listed yet; the first of the worker's prompts is the one it runs.
      const first = flights.values().next().value;
      if (first && !running.size) first.running = true;
      for (const f of ended) deps.events.finished(worker, f);
      deps.events.changed(worker);
    } catch (e) {
      deps.logger.debug({ err: (e as Error).message, worker: deps.name }, 'queue: GET /queue failed');
      // Twice in a row (a second read soon after), so one slow answer on a busy machine is not an outage.
      if (up && ++failures < 2) schedule(300);
      else if (up) {
        up = false;
        const lost = [...flights.values()];
        flights.clear();
        adopted = false;
        deps.logger.warn({ worker: deps.name, lost: lost.length }, 'queue: worker is down');
        deps.events.down(worker, lost);
      }
    } finally {
      asking = false;
      if (flights.size || !up) schedule(up ? pollMs : 1000);
    }
  }

  let caps: Caps | null = null;
  /** Learns (again, on every rejoin) what it can run: a worker may have come back with other nodes or models. */
  async function learn(): Promise<void> {
    try {
      caps = capsOf(await deps.upstream.json('GET', '/object_info', { timeoutMs: 60_000 }));
    } catch (e) {
      deps.logger.warn({ err: (e as Error).message, worker: deps.name }, 'queue: could not read the worker’s /object_info');
    }
  }

  const worker: Worker = {
    name: deps.name,
    url: deps.url,
    weight: deps.weight ?? 1,
    tags: deps.tags ?? [],
    upstream: deps.upstream,
    get up() {
      return up;
    },
    get known() {
      return adopted;
    },
    get caps() {
      return caps;
    },
    flights,
    get lastSentAt() {
      return lastSentAt;
    },
    track(id, owner) {
      // ComfyUI runs its queue in order: a prompt sent to an empty worker is the one running.
      flights.set(id, { id, owner, sentAt: Date.now(), running: flights.size === 0 });
      lastSentAt = Date.now();
      schedule(pollMs); // followed from now on (a no-op when a read is already due)
    },
    untrack(id) {
      if (flights.delete(id)) deps.events.changed(worker);
    },
    refreshNow: () => refresh(),
    adopt() {
      adopted = false;
      return refresh();
    },
    get reading() {
      return asking;
    },
    refreshSoon() {
      if (timer) {
        clearTimeout(timer);
        timer = null;
      }
      schedule(0);
    },
    close() {
      closed = true;
      if (timer) clearTimeout(timer);
    },
  };
  // Learn what it holds now (prompts released by a gateway that was restarted).
  schedule(0);
  return worker;
}

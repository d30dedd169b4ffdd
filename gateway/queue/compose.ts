import path from 'node:path';
import type { RouteMount } from '../app';
import type { CredentialChain } from '../auth/chain';
import type { ResolvedConfig } from '../config/load';
import type { Logger } from '../log';
import type { Upstream } from '../proxy/upstream';
import type { AccountKeys, UserStore } from '../users/types';
import type { SharedStore } from '../store/compose';
import { createFileQueueStore } from './fileStore';
import { createSharedQueue } from './pgReplicas';
import { createPgQueueStore } from './pgStore';
import { createGatewayQueue, type GatewayQueue } from '.';
import { queueRoutes } from './routes';
import type { QueueStore } from './store';

/** The queue wired for compose.ts: the queue itself, its routes, and what /health shows admins. */
export interface ComposedQueue {
  queue: GatewayQueue;
  routes: RouteMount;
  /** per-worker health for admins */
  health(): { name: string; url: string; up: boolean; running: number; waiting: number }[];
  close(): Promise<void>;
}

/** Builds the gateway queue from the config (`scheduler`, `limits`, `upstream`), with the file store unless given one. */
export async function composeQueue(deps: {
  config: ResolvedConfig;
  logger: Logger;
  upstream: Upstream;
  keys: AccountKeys;
  users: Pick<UserStore, 'get'>;
  chain: Pick<CredentialChain, 'authenticate'>;
  store?: QueueStore;
  /** the PostgreSQL store (store.kind "postgres"): the queue lives there and is shared by the replicas */
  shared?: SharedStore | null;
}): Promise<ComposedQueue> {
  const { config, shared } = deps;
  const store =
    deps.store ??
    (shared
      ? createPgQueueStore({ pool: shared.pool, feed: shared.feed })
      : createFileQueueStore({ dir: path.join(config.paths.dataDir, 'queue'), logger: deps.logger }));
  const queue = await createGatewayQueue({
    store,
    specs: config.upstreams ?? [{ url: config.upstream, name: 'default', weight: 1, tags: [] }],
    primary: deps.upstream,
    headerTimeoutMs: (config.upstream_timeout_s ?? 300) * 1000,
    keys: deps.keys,
    logger: deps.logger,
    scheduler: config.scheduler,
    limits: config.limits,
    shared: shared ? createSharedQueue({ url: config.store.url!, pool: shared.pool, feed: shared.feed, logger: deps.logger }) : undefined,
  });
  return {
    queue,
    routes: queueRoutes({ queue, users: deps.users, chain: deps.chain }),
    health: () =>
      queue.workers.all().map((w) => ({
        name: w.name,
        url: w.url,
        up: w.up,
        running: [...w.flights.values()].filter((f) => f.running).length,
        waiting: [...w.flights.values()].filter((f) => !f.running).length,
      })),
    close: () => queue.close(),
  };
}

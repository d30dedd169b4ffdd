import crypto from 'node:crypto';
import type pg from 'pg';
import type { Revocations } from '../auth/revocations';
import { ConfigError, type ResolvedConfig } from '../config/load';
import type { Logger } from '../log';
import { createUserStore, type GatewayUserStore } from '../users/store';
import { createDocs, type Docs } from './docs';
import { createChangeFeed, type ChangeFeed } from './feed';
import { auditSink, hfTokenPersistence, isolationShared, sharedRoots, sharedSetupCode } from './parts';
import { hfKeyFromEnv, HF_KEY_ENV } from './secrets';
import { openRedis, redact, type SharedRedis } from './redis';
import { redisBruteForceState, type BruteForceState } from '../net/bruteForceState';
import { createPool, migrate, q } from './pg';
import { createPgUserStore } from './pgUsers';

/** The shared store or Redis cannot be reached at start-up: main prints the message and exits 1. */
export class StoreStartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreStartError';
  }
}

/** The records of one gateway, wherever they live (files in data_dir, or PostgreSQL shared by replicas). */
export interface Stores {
  kind: 'file' | 'postgres';
  users: GatewayUserStore;
  /** shared documents (ledger, ComfyUI ids, HF tokens) and secrets; null for the file store, whose parts keep files */
  shared: SharedStore | null;
  /** the replicas' Redis (config `redis`), or null */
  redis: SharedRedis | null;
  /** lockout counters in Redis when it is configured (undefined: in this process) */
  bruteForceState?: (windowMs: number, blacklistWindowMs: number) => BruteForceState;
  close(): Promise<void>;
}

/** What the PostgreSQL store adds for the parts that otherwise keep files of their own. */
export interface SharedStore {
  pool: pg.Pool;
  feed: ChangeFeed;
  docs: Docs;
  /** the key HF tokens are encrypted with (AES-256-GCM); null only in tools that never touch them */
  hfKey: Buffer | null;
  /** a secret every replica shares: created once by whichever replica asks first */
  secret(name: string, make: () => string): Promise<string>;
}

/** Opens the configured store: the embedded file store by default, or PostgreSQL (migrated first, under a lock). */
export async function openStores(opts: {
  config: ResolvedConfig;
  logger?: Logger;
  revocations?: Revocations;
  env: NodeJS.ProcessEnv;
  /** false for tools that never touch HF tokens (the users CLI): the key is then not required */
  needHfKey?: boolean;
}): Promise<Stores> {
  const { config, logger } = opts;
  const hfKey = hfKeyFromEnv(opts.env);
  if (config.store.kind === 'postgres' && !hfKey && opts.needHfKey !== false)
    throw new ConfigError([
      `store.kind "postgres" keeps HuggingFace tokens encrypted: set ${HF_KEY_ENV} to 64 hex characters (32 random bytes, the same on every replica), e.g. from \`openssl rand -hex 32\``,
    ]);
  const redis = config.redis
    ? await openRedis({ url: config.redis.url, prefix: config.redis.key_prefix, logger }).catch((e: Error) => {
        throw new StoreStartError(`cannot reach Redis (redis.url): ${e.message}`);
      })
    : null;
  const fast = redis
    ? {
        redis,
        bruteForceState: (windowMs: number, blacklistWindowMs: number) =>
          redisBruteForceState({ redis, windowMs, blacklistWindowMs, logger }),
      }
    : { redis: null };
  if (config.store.kind === 'file') {
    const users = await createUserStore({ file: config.paths.usersDb, logger, revocations: opts.revocations });
    return {
      kind: 'file',
      users,
      shared: null,
      ...fast,
      async close() {
        await users.flush();
        await redis?.close();
      },
    };
  }
  const shared = await openShared(config.store.url!, logger, hfKey).catch(async (e: Error) => {
    await redis?.close();
    throw new StoreStartError(`cannot open the PostgreSQL store (store.url ${redact(config.store.url!)}): ${e.message}`);
  });
  const users = await createPgUserStore({ pool: shared.pool, feed: shared.feed, logger, revocations: opts.revocations });
  return {
    kind: 'postgres',
    users,
    shared,
    ...fast,
    async close() {
      await users.flush();
      await redis?.close();
      await shared.feed.close();
      await shared.pool.end().catch(() => undefined);
    },
  };
}

/** Migrates, then opens the pool, the change feed and the documents. */
export async function openShared(url: string, logger: Logger | undefined, hfKey: Buffer | null): Promise<SharedStore> {
  const applied = await migrate(url);
  if (applied.length) logger?.info({ applied }, 'PostgreSQL schema migrated');
  const pool = createPool(url);
  const feed = await createChangeFeed({ url, logger });
  const docs = createDocs({ pool, feed, logger });
  return {
    pool,
    feed,
    docs,
    hfKey,
    async secret(name, make) {
      await q(pool, 'INSERT INTO gw_meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING', [`secret:${name}`, JSON.stringify(make())]);
      const r = await q<{ value: string }>(pool, 'SELECT value FROM gw_meta WHERE key = $1', [`secret:${name}`]);
      return r.rows[0].value;
    },
  };
}

/** A random secret as text (for SharedStore.secret). */
export const randomSecret =
  (bytes = 64) =>
  () =>
    crypto.randomBytes(bytes).toString('hex');

/** Everything the other parts take from the shared store, read once at start. */
export async function sharedParts(s: SharedStore, logger: Logger) {
  const [isolation, hfTokens, setupCode] = await Promise.all([isolationShared(s), hfTokenPersistence(s, logger), sharedSetupCode(s)]);
  return { isolation, hfTokens, setupCode, audit: auditSink(s, logger), roots: sharedRoots(s, logger) };
}

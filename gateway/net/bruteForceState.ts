import { MemoryStore, type ClientRateLimitInfo, type Options as RateLimitOptions } from 'express-rate-limit';
import { RedisStore, type RedisReply } from 'rate-limit-redis';
import type { Logger } from '../log';
import type { SharedRedis } from '../store/redis';

/** A failure counter (an express-rate-limit store, always asynchronous). */
export interface Counter {
  increment(key: string): Promise<ClientRateLimitInfo>;
  resetKey(key: string): Promise<void>;
  shutdown(): void;
}

/** Where the brute-force guard keeps its counts and locks: this process, or Redis shared by every replica. */
export interface BruteForceState {
  /** failures per key (ip:… / user:…) within the window */
  failures: Counter;
  /** failures per client unit toward `blacklist_after_attempts` */
  blacklistCounts: Counter;
  /** until when (unix ms) a key is refused; read synchronously on every request, so kept in memory */
  lockedUntil(key: string): number | undefined;
  lock(key: string, until: number): void;
  unlock(key: string): void;
  /** adds `unit` to the addresses that failed against `key` (starting over when `fresh`); how many there are now */
  addUserIp(key: string, unit: string, fresh: boolean): Promise<number>;
  forgetUserIps(key: string): void;
  /** false while the shared counters cannot be reached: password checks are then refused (fail closed) */
  available(): boolean;
  close(): void;
}

/** A MemoryStore initialised for `windowMs`. */
function memoryStore(windowMs: number): Counter {
  const s = new MemoryStore();
  s.init({ windowMs } as RateLimitOptions);
  return { increment: async (k) => s.increment(k), resetKey: async (k) => s.resetKey(k), shutdown: () => s.shutdown() };
}

/** The single-process state (the default): express-rate-limit's MemoryStore and two maps. */
export function localBruteForceState(windowMs: number, blacklistWindowMs: number): BruteForceState {
  const failures = memoryStore(windowMs);
  const blacklistCounts = memoryStore(blacklistWindowMs);
  const locks = new Map<string, number>();
  const userIps = new Map<string, Set<string>>();
  return {
    failures,
    blacklistCounts,
    lockedUntil: (k) => locks.get(k),
    lock(k, until) {
      locks.set(k, until);
      if (locks.size > 100_000) locks.delete(locks.keys().next().value as string);
    },
    unlock: (k) => void locks.delete(k),
    async addUserIp(key, unit, fresh) {
      let ips = userIps.get(key);
      if (!ips || fresh) userIps.set(key, (ips = new Set()));
      if (ips.size < 64) ips.add(unit);
      if (userIps.size > 100_000) userIps.delete(userIps.keys().next().value as string);
      return ips.size;
    },
    forgetUserIps: (k) => void userIps.delete(k),
    available: () => true,
    close() {
      failures.shutdown();
      blacklistCounts.shutdown();
    },
  };
}

/**
 * The replicas' state in Redis (rate-limit-redis for the counters): a failure counted on one replica counts on all,
 * and a lock set on one is broadcast to the others' memory at once (and reloaded from Redis after an outage).
 * While Redis is away nothing is shared: `available()` is false, so password checks are refused, and the counters
 * fall back to this replica's memory, so guessed keys and tokens still lock out — never an open door.
 */
export function redisBruteForceState(deps: {
  redis: SharedRedis;
  windowMs: number;
  blacklistWindowMs: number;
  logger?: Logger;
}): BruteForceState {
  const { redis, logger } = deps;
  const p = `${redis.prefix}bf:`;
  const send = (...args: string[]) => redis.client.call(args[0], ...args.slice(1)) as Promise<RedisReply>;
  const shared = (prefix: string, windowMs: number) => {
    const r = new RedisStore({ sendCommand: send, prefix: `${p}${prefix}:` });
    r.init({ windowMs } as RateLimitOptions);
    const local = memoryStore(windowMs);
    const store: Counter = {
      increment: (key) => (redis.available() ? r.increment(key).catch(() => local.increment(key)) : local.increment(key)),
      resetKey: async (key) => {
        await local.resetKey(key);
        if (redis.available()) await r.resetKey(key).catch(() => undefined);
      },
      shutdown: () => local.shutdown(),
    };
    return store;
  };
  const locks = new Map<string, number>();
  const apply = (key: string, until: number) => (until > Date.now() ? locks.set(key, until) : locks.delete(key));
  redis.subscribe('bf:lock', (m) => {
    try {
      const { key, until } = JSON.parse(m) as { key: string; until: number };
      if (typeof key === 'string' && typeof until === 'number') apply(key, until);
    } catch {
      // not ours
    }
  });
  /** Locks set anywhere while we could not hear them: read them back from their keys. */
  const reload = async () => {
    try {
      let cursor = '0';
      do {
        const [next, keys] = await redis.client.scan(cursor, 'MATCH', `${p}lock:*`, 'COUNT', 500);
        cursor = next;
        const values = keys.length ? await redis.client.mget(...keys) : [];
        keys.forEach((k, i) => values[i] && apply(k.slice(`${p}lock:`.length), Number(values[i])));
      } while (cursor !== '0');
    } catch (err) {
      logger?.warn({ err: (err as Error).message }, 'could not reload the lockouts from Redis');
    }
  };
  redis.onReconnect(() => void reload());
  void reload();
  const fallbackIps = localBruteForceState(deps.windowMs, deps.blacklistWindowMs);
  const failures = shared('fail', deps.windowMs);
  const blacklistCounts = shared('bl', deps.blacklistWindowMs);
  return {
    failures,
    blacklistCounts,
    lockedUntil: (k) => locks.get(k),
    lock(key, until) {
      apply(key, until);
      const ms = Math.max(1, until - Date.now());
      const msg = JSON.stringify({ key, until });
      redis.client
        .set(`${p}lock:${key}`, String(until), 'PX', ms)
        .then(() => redis.publish('bf:lock', msg))
        .catch(() => undefined);
    },
    unlock(key) {
      locks.delete(key);
      redis.client
        .del(`${p}lock:${key}`)
        .then(() => redis.publish('bf:lock', JSON.stringify({ key, until: 0 })))
        .catch(() => undefined);
    },
    async addUserIp(key, unit, fresh) {
      if (!redis.available()) return fallbackIps.addUserIp(key, unit, fresh);
      try {
        const k = `${p}ips:${key}`;
        const m = redis.client.multi();
        if (fresh) m.del(k);
        m.sadd(k, unit).pexpire(k, deps.windowMs).scard(k);
        const out = await m.exec();
        return Number(out?.[out.length - 1]?.[1] ?? 0);
      } catch {
        return fallbackIps.addUserIp(key, unit, fresh);
      }
    },
    forgetUserIps(key) {
      fallbackIps.forgetUserIps(key);
      redis.client.del(`${p}ips:${key}`).catch(() => undefined);
    },
    available: () => redis.available(),
    close() {
      failures.shutdown();
      blacklistCounts.shutdown();
      fallbackIps.close();
    },
  };
}

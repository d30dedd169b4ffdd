import { Redis } from 'ioredis';
import type { Logger } from '../log';

/** The replicas' shared fast state (lockout and rate counters, broadcasts): one command and one subscriber connection. */
export interface SharedRedis {
  /** for commands; fails at once (never queues) while Redis is away, so callers can fail closed */
  client: Redis;
  /** prefix of every key and channel of this gateway (config redis.key_prefix) */
  prefix: string;
  /** true while the command connection is ready */
  available(): boolean;
  /** publishes on `prefix + channel`; false when Redis is away */
  publish(channel: string, message: string): Promise<boolean>;
  /** hears `prefix + channel` (every replica, this one included) */
  subscribe(channel: string, handler: (message: string) => void): void;
  /** runs after each reconnection (broadcasts may have been missed meanwhile) */
  onReconnect(handler: () => void): void;
  close(): Promise<void>;
}

/** Connects to Redis (waiting up to `timeoutMs` for the first connection; later outages are survived). */
export async function openRedis(opts: { url: string; prefix: string; logger?: Logger; timeoutMs?: number }): Promise<SharedRedis> {
  const { logger, prefix } = opts;
  const common = {
    // Fail fast instead of queueing: a lockout check that waits for Redis is a request hanging, one that
    // pretends is a lockout failing open.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: 2000,
    commandTimeout: 2000,
    retryStrategy: () => 250,
    lazyConnect: true,
  };
  const client = new Redis(opts.url, common);
  const sub = new Redis(opts.url, { ...common, commandTimeout: undefined, enableOfflineQueue: true });
  const handlers = new Map<string, ((m: string) => void)[]>();
  const reconnects: (() => void)[] = [];
  let everReady = false;
  let down = false;
  for (const c of [client, sub]) c.on('error', () => undefined);
  client.on('ready', () => {
    if (everReady && down) {
      logger?.info('Redis is back');
      for (const r of reconnects) r();
    }
    everReady = true;
    down = false;
  });
  client.on('close', () => {
    if (everReady && !down) logger?.error('lost Redis; lockout checks refuse (fail closed) until it is back');
    down = true;
  });
  sub.on('message', (channel: string, message: string) => {
    for (const h of handlers.get(channel) ?? []) {
      try {
        h(message);
      } catch (err) {
        logger?.error({ err, channel }, 'a Redis broadcast handler failed');
      }
    }
  });
  const deadline = opts.timeoutMs ?? 10_000;
  const connectOrFail = async (c: Redis) => {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        c.connect(),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`Redis at ${redact(opts.url)} did not answer`)), deadline))),
      ]);
    } finally {
      clearTimeout(timer);
    }
  };
  try {
    await connectOrFail(client);
    await connectOrFail(sub);
  } catch (e) {
    client.disconnect();
    sub.disconnect();
    throw e;
  }
  return {
    client,
    prefix,
    available: () => client.status === 'ready',
    async publish(channel, message) {
      try {
        await client.publish(prefix + channel, message);
        return true;
      } catch {
        return false;
      }
    },
    subscribe(channel, handler) {
      const full = prefix + channel;
      const list = handlers.get(full);
      if (list) return void list.push(handler);
      handlers.set(full, [handler]);
      // The subscriber re-subscribes by itself after a reconnection (ioredis autoResubscribe).
      sub.subscribe(full).catch((err: Error) => logger?.error({ err: err.message, channel }, 'Redis subscribe failed'));
    },
    onReconnect: (h) => void reconnects.push(h),
    async close() {
      client.disconnect();
      sub.disconnect();
    },
  };
}

/** The URL without its password, for messages. */
export const redact = (url: string) => url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');

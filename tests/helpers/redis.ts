import crypto from 'node:crypto';
import { Redis } from 'ioredis';

/** The Redis the tests use (the machines'; `.ci/run` starts it where it is not running). */
export const REDIS_URL = process.env.CGW_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** A key prefix of this test run's own; `drop` deletes every key under it. A missing Redis fails loudly, never skips. */
export async function createTestRedisPrefix(url = REDIS_URL): Promise<{ url: string; prefix: string; drop(): Promise<void> }> {
  const prefix = `cgw-test-${crypto.randomBytes(5).toString('hex')}:`;
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, connectTimeout: 3000 });
  probe.on('error', () => undefined);
  try {
    await probe.connect();
    await probe.ping();
  } catch (e) {
    probe.disconnect();
    throw new Error(`Redis is not reachable at ${url} (${(e as Error).message}); start it (.ci/run does) — these tests do not skip`);
  }
  return {
    url,
    prefix,
    async drop() {
      let cursor = '0';
      do {
        const [next, keys] = await probe.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
        cursor = next;
        if (keys.length) await probe.del(...keys);
      } while (cursor !== '0');
      probe.disconnect();
    },
  };
}

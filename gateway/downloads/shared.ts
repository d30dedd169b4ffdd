import crypto from 'node:crypto';
import { AppError } from '../errors';
import type { Logger } from '../log';
import type { SharedRedis } from '../store/redis';
import type { DownloadManager, Session } from './manager';

const CHANNEL = 'downloads';
/** A claim outlives a replica killed mid-download by this much; the owner renews it on every beat. */
const CLAIM_MS = 15_000;
/** How often a replica tells the others about its downloads (progress), and how long a report stays believed. */
const BEAT_MS = 500;
const STALE_MS = 4000;

type Report =
  | {
      origin: string;
      kind: 'state';
      modelId: string;
      user: string;
      state: Session['state'];
      bytes: number;
      total: number | null;
      startedAt: number;
    }
  | { origin: string; kind: 'end'; modelId: string }
  | { origin: string; kind: 'cancel'; modelId: string; user: string; ip: string };

/**
 * Downloads across replicas (Redis): one replica downloads a model at a time — it claims the model in Redis
 * before fetching a byte (SET NX, renewed while it runs, expiring if it dies) — and every replica sees every
 * download (state and progress broadcast twice a second) and can cancel one running elsewhere. While Redis is away
 * new downloads are refused (503 STORE_UNAVAILABLE): two replicas must never fetch the same file twice.
 */
export function shareDownloads(deps: { redis: SharedRedis; logger: Logger }) {
  const { redis, logger } = deps;
  const origin = crypto.randomUUID();
  const key = (modelId: string) => `${redis.prefix}dl:${modelId}`;
  const remote = new Map<string, { s: Session; seen: number }>();
  let inner: DownloadManager | null = null;
  const published = new Set<string>();

  const claim = async (s: Session) => {
    const ok = (await redis.client.set(key(s.modelId), `${origin}:${s.epoch}`, 'PX', CLAIM_MS, 'NX')) === 'OK';
    if (!ok) logger.info({ model_id: s.modelId }, 'another replica is downloading this model; not fetching it here');
    return ok;
  };
  const send = (r: Report) => void redis.publish(CHANNEL, JSON.stringify(r));

  redis.subscribe(CHANNEL, (m) => {
    let r: Report;
    try {
      r = JSON.parse(m) as Report;
    } catch {
      return;
    }
    if (r.origin === origin || typeof r.modelId !== 'string') return;
    if (r.kind === 'end') remote.delete(r.modelId);
    else if (r.kind === 'cancel') {
      if (inner?.get(r.modelId)) inner.cancel(r.modelId, { user: r.user, ip: r.ip });
    } else
      remote.set(r.modelId, {
        seen: Date.now(),
        s: {
          modelId: r.modelId,
          url: '',
          dest: '',
          sha256: null,
          epoch: 0,
          user: r.user,
          ip: '',
          state: r.state,
          bytes: r.bytes,
          total: r.total,
          abort: new AbortController(),
          startedAt: r.startedAt,
        },
      });
  });

  /** Our downloads, told to the others; claims renewed; ended ones released. */
  const beat = setInterval(() => {
    if (!inner) return;
    const now = new Set<string>();
    for (const s of inner.active()) {
      now.add(s.modelId);
      published.add(s.modelId);
      send({
        origin,
        kind: 'state',
        modelId: s.modelId,
        user: s.user,
        state: s.state,
        bytes: s.bytes,
        total: s.total,
        startedAt: s.startedAt,
      });
      if (s.state === 'running') redis.client.set(key(s.modelId), `${origin}:${s.epoch}`, 'PX', CLAIM_MS, 'XX').catch(() => undefined);
    }
    for (const id of [...published]) {
      if (now.has(id)) continue;
      published.delete(id);
      send({ origin, kind: 'end', modelId: id });
      // Released only if still ours (a later claim by another replica stays).
      redis.client
        .eval(
          "if string.find(redis.call('GET', KEYS[1]) or '', ARGV[1], 1, true) == 1 then return redis.call('DEL', KEYS[1]) end return 0",
          1,
          key(id),
          `${origin}:`,
        )
        .catch(() => undefined);
    }
  }, BEAT_MS);
  beat.unref();

  /** The epochs of every download some replica holds a live claim on (their temp files are in use). */
  async function claimedEpochs(): Promise<Set<number>> {
    const epochs = new Set<number>();
    let cursor = '0';
    do {
      const [next, keys] = await redis.client.scan(cursor, 'MATCH', `${redis.prefix.replace(/[*?[\]\\]/g, '\\$&')}dl:*`, 'COUNT', 500);
      cursor = next;
      const values = keys.length ? await redis.client.mget(...keys) : [];
      for (const v of values) if (v) epochs.add(Number(v.slice(v.lastIndexOf(':') + 1)));
    } while (cursor !== '0');
    return epochs;
  }

  const elsewhere = (id: string) => {
    const r = remote.get(id);
    if (r && Date.now() - r.seen > STALE_MS) remote.delete(id);
    return remote.get(id)?.s;
  };

  return {
    claim,
    /** wraps this replica's manager so that it sees and cancels the others' downloads */
    wrap(m: DownloadManager): DownloadManager {
      inner = m;
      return {
        ...m,
        get: (id) => m.get(id) ?? elsewhere(id),
        schedule(list, who) {
          if (!redis.available())
            throw new AppError(
              503,
              'STORE_UNAVAILABLE',
              'Downloads are paused: the replicas cannot coordinate right now (Redis unreachable)',
            );
          for (const n of list) if (elsewhere(n.modelId)) return n.modelId;
          return m.schedule(list, who);
        },
        sweep(dirs) {
          // Another replica's running download is older than this process too: its file stays while its claim lives.
          // Without Redis nothing is known to be an orphan, so nothing goes (the next start sweeps).
          return m.sweep(dirs, async () => {
            const epochs = await claimedEpochs().catch(() => null);
            if (epochs) return (epoch) => epochs.has(epoch);
            logger.warn('orphaned partial downloads not swept: Redis unreachable, other replicas may be writing them');
            return () => true;
          });
        },
        cancel(id, who) {
          if (m.get(id)) return m.cancel(id, who);
          if (!elsewhere(id)) return false;
          remote.delete(id);
          send({ origin, kind: 'cancel', modelId: id, user: who.user, ip: who.ip });
          return true;
        },
        async close() {
          clearInterval(beat);
          await m.close();
          for (const id of published) send({ origin, kind: 'end', modelId: id });
        },
      };
    },
  };
}

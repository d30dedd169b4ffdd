import pg from 'pg';
import type { Logger } from '../log';
import type { ChangeFeed } from '../store/feed';
import { q } from '../store/pg';
import { createAnswers, type Answers } from './answers';
import { createFairStore } from './pgFair';
import { loadPgQueue, NEXT_SEQ_KEY } from './pgStore';
import type { FairState } from './scheduler';
import type { FailedPrompt, HeldPrompt, LimitOverride, UsageRow } from './store';

/** The advisory lock the releasing replica holds for as long as its session lives (any constant shared by all). */
const RELEASER_LOCK = 7_254_131_313;

/** What the queue does when another replica changed the shared queue (each handler is given the row as it is now). */
export interface SharedQueueHandlers {
  /** a held prompt appeared, moved (reorder) or left (null: released, cancelled) */
  held(id: string, p: HeldPrompt | null): void;
  failed(id: string, f: FailedPrompt | null): void;
  limits(owner: string, l: LimitOverride | null): void;
  /** the usage row of (owner, day) as it is now */
  usage(row: UsageRow): void;
  /** release what can be released now */
  pump(): void;
  /** everything held, after the change feed was back (notifications may have been missed) or this replica took over */
  resync(held: HeldPrompt[]): void;
  /** this replica is about to release prompts: learn what the workers hold (resolves before the first release) */
  releasing(): Promise<void>;
  /** this replica is about to release prompts: the round robin goes on where the last releaser left it */
  fair(s: FairState): void;
}

/** How a queue on PostgreSQL shares itself with the other replicas (given to createGatewayQueue). */
export interface SharedQueue {
  /** whether this replica releases prompts now (exactly one replica does, while its lease lives) */
  releasing(): boolean;
  /** the next seq/number, handed out by the database so two replicas never give the same one */
  takeSeq(): Promise<number>;
  /** ComfyUI's answers to releases, for submitters waiting on another replica than the releaser */
  answers: Answers;
  /** the releaser: where its round robin stands now (kept for the next releaser) */
  saveFair(s: FairState): void;
  start(h: SharedQueueHandlers): void;
  close(): Promise<void>;
}

/**
 * One releaser at a time: each replica tries a session-level pg_try_advisory_lock on a connection of its own; the
 * holder releases prompts, the others only enqueue (into PostgreSQL) and follow the queue through the change feed.
 * A holder that dies (kill -9, crash, lost network) loses its session and so the lock; the next try of another
 * replica (every `retryMs`) takes over and re-reads the held prompts. A holder that loses its connection stops
 * releasing at once, before anyone else can take the lock.
 */
export function createSharedQueue(deps: { url: string; pool: pg.Pool; feed: ChangeFeed; logger: Logger; retryMs?: number }): SharedQueue {
  const { pool, feed, logger } = deps;
  const retryMs = deps.retryMs ?? 500;
  let client: pg.Client | null = null;
  let holding = false;
  let closed = false;
  let handlers: SharedQueueHandlers | null = null;
  let timer: NodeJS.Timeout | null = null;
  const answers = createAnswers({ pool, feed, logger, releasing: () => holding });
  const fair = createFairStore({ pool, logger });

  const drop = (why: string) => {
    if (holding) logger.warn({ why }, 'queue: lost the releaser lease; another replica will release prompts');
    holding = false;
    const c = client;
    client = null;
    c?.end().catch(() => undefined);
  };

  async function tryLease(): Promise<void> {
    if (closed) return;
    if (holding && client) {
      // the heartbeat: a silent server (blocked network) must not leave this replica thinking it still holds
      await client.query('SELECT 1').catch((e: Error) => drop(e.message));
      return;
    }
    if (!client) {
      const c = new pg.Client({ connectionString: deps.url, connectionTimeoutMillis: 3000, query_timeout: 3000 });
      c.on('error', (e) => client === c && drop(e.message));
      c.on('end', () => client === c && drop('connection ended'));
      try {
        await c.connect();
        // A holder cut off by the network keeps its session (and the lock) open on the server until the server
        // notices: with the heartbeat every retryMs, a session silent for 5 s is ended by PostgreSQL (14+), which
        // frees the lock for another replica while this one, having lost its connection, has already stopped.
        await c.query("SET idle_session_timeout = '5s'").catch(() => undefined);
      } catch {
        await c.end().catch(() => undefined);
        return;
      }
      client = c;
    }
    const c = client;
    const got = await c
      .query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [RELEASER_LOCK])
      .then((r) => r.rows[0].ok)
      .catch((e: Error) => (drop(e.message), false));
    if (!got || closed || client !== c) return;
    // Read everything held before releasing anything: the last holder may have died with notifications unsent.
    try {
      const state = await loadPgQueue(pool);
      handlers?.resync(state.held);
      handlers?.fair(await fair.load());
    } catch (e) {
      logger.warn({ err: (e as Error).message }, 'queue: could not read the held prompts after taking the releaser lease');
      return void (await c.query('SELECT pg_advisory_unlock($1)', [RELEASER_LOCK]).catch(() => drop('unlock failed')));
    }
    await handlers?.releasing();
    if (closed || client !== c) return;
    holding = true;
    logger.info('queue: this replica now releases the held prompts');
    handlers?.pump();
  }

  const loop = () => {
    if (closed) return;
    timer = setTimeout(() => {
      timer = null;
      void tryLease().finally(loop);
    }, retryMs);
    timer.unref();
  };

  // Notifications are applied one at a time, in arrival order, each reading the row as it is now.
  let applying: Promise<void> = Promise.resolve();
  feed.on((ch) => {
    if (ch.k !== 'queue' || !handlers) return;
    const h = handlers;
    applying = applying.then(async () => {
      try {
        if (ch.c === 'held') {
          const r = await q<{ value: HeldPrompt }>(pool, 'SELECT value FROM gw_queue_held WHERE id = $1', [ch.id]);
          h.held(ch.id, r.rows[0]?.value ?? null);
        } else if (ch.c === 'failed') {
          const r = await q<{ value: FailedPrompt }>(pool, 'SELECT value FROM gw_queue_failed WHERE id = $1 ORDER BY n DESC LIMIT 1', [
            ch.id,
          ]);
          h.failed(ch.id, r.rows[0]?.value ?? null);
        } else if (ch.c === 'limits') {
          const r = await q<{ value: LimitOverride }>(pool, 'SELECT value FROM gw_queue_limits WHERE owner = $1', [ch.id]);
          h.limits(ch.id, r.rows[0]?.value ?? null);
        } else if (ch.c === 'usage') {
          const [owner, day] = ch.id.split('|');
          const r = await q<{ prompts: string; gpu_s: number; images: string }>(
            pool,
            'SELECT prompts, gpu_s, images FROM gw_queue_usage WHERE owner = $1 AND day = $2',
            [owner, day],
          );
          const row = r.rows[0];
          if (row) h.usage({ owner, day, prompts: Number(row.prompts), gpu_s: row.gpu_s, images: Number(row.images) });
        }
      } catch (err) {
        logger.error({ err, change: ch }, 'queue: could not read a change another replica made');
      }
    });
  });
  // The feed was down: changes may have been missed, so the held prompts are read again (limits and usage follow
  // the next change of each; a missed one is only a count, never a prompt).
  feed.onResync(async () => {
    if (!handlers) return;
    const h = handlers;
    const state = await loadPgQueue(pool);
    h.resync(state.held);
  });

  return {
    releasing: () => holding,
    answers,
    saveFair: (s) => fair.save(s),
    async takeSeq() {
      const r = await q<{ n: string }>(
        pool,
        `INSERT INTO gw_meta (key, value) VALUES ($1, to_jsonb(2)) ON CONFLICT (key)
         DO UPDATE SET value = to_jsonb((gw_meta.value #>> '{}')::bigint + 1) RETURNING (value #>> '{}')::bigint - 1 AS n`,
        [NEXT_SEQ_KEY],
      );
      return Number(r.rows[0].n);
    },
    start(h) {
      handlers = h;
      void tryLease().finally(loop);
    },
    async close() {
      closed = true;
      if (timer) clearTimeout(timer);
      answers.close();
      holding = false;
      const c = client;
      client = null;
      await c?.end().catch(() => undefined);
    },
  };
}

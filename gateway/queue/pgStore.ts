import type pg from 'pg';
import type { ChangeFeed } from '../store/feed';
import { CHANGE_CHANNEL } from '../store/feed';
import { q, withTx } from '../store/pg';
import {
  emptyState,
  type FailedPrompt,
  type HeldPrompt,
  type LimitOverride,
  type QueueOp,
  type QueueState,
  type QueueStore,
} from './store';

/** Failed prompts kept (as the file store: the oldest go first). */
const MAX_FAILED = 1000;

/** The gw_meta key of the next seq/number to hand out (it never goes back, even when every prompt has left). */
export const NEXT_SEQ_KEY = 'queue:next_seq';

/**
 * The QueueStore on PostgreSQL (migration 0002_queue): one row per held prompt, failed prompt, limit override and
 * (owner, day) of usage. Each `apply` is one committed transaction; held-prompt changes also notify the other
 * replicas (k = 'queue', id = the prompt id) so their views of the queue follow without polling.
 */
export function createPgQueueStore(deps: { pool: pg.Pool; feed?: Pick<ChangeFeed, 'payload'> }): QueueStore {
  const { pool, feed } = deps;
  // delivered to the other replicas on commit: which record changed (they read it themselves)
  const notify = (c: pg.PoolClient | pg.Pool, what: 'held' | 'failed' | 'limits' | 'usage', id: string) =>
    feed ? q(c, 'SELECT pg_notify($1, $2)', [CHANGE_CHANNEL, feed.payload('queue', id, what)]) : Promise.resolve();

  async function apply(o: QueueOp): Promise<void> {
    switch (o.op) {
      case 'hold':
        return withTx(pool, async (c) => {
          const p = o.prompt;
          await c.query(
            'INSERT INTO gw_queue_held (id, seq, value) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, value = EXCLUDED.value',
            [p.id, p.seq, JSON.stringify(p)],
          );
          await c.query(
            `INSERT INTO gw_meta (key, value) VALUES ($1, to_jsonb($2::bigint)) ON CONFLICT (key)
             DO UPDATE SET value = to_jsonb(GREATEST((gw_meta.value #>> '{}')::bigint, $2::bigint))`,
            [NEXT_SEQ_KEY, Math.max(p.seq, p.number) + 1],
          );
          await notify(c, 'held', p.id);
        });
      case 'drop':
        return withTx(pool, async (c) => {
          await c.query('DELETE FROM gw_queue_held WHERE id = ANY($1)', [o.ids]);
          await c.query('DELETE FROM gw_queue_failed WHERE id = ANY($1)', [o.ids]);
          for (const id of o.ids) {
            await notify(c, 'held', id);
            await notify(c, 'failed', id);
          }
        });
      case 'failed':
        return withTx(pool, (c) => recordFailed(c, o.entry, feed));
      case 'limits':
        return withTx(pool, async (c) => {
          if (!o.limits) await c.query('DELETE FROM gw_queue_limits WHERE owner = $1', [o.owner]);
          else
            await c.query(
              'INSERT INTO gw_queue_limits (owner, value) VALUES ($1, $2) ON CONFLICT (owner) DO UPDATE SET value = EXCLUDED.value',
              [o.owner, JSON.stringify(o.limits)],
            );
          await notify(c, 'limits', o.owner);
        });
      case 'usage':
        return withTx(pool, async (c) => {
          await c.query(
            `INSERT INTO gw_queue_usage (owner, day, prompts, gpu_s, images) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (owner, day) DO UPDATE SET prompts = gw_queue_usage.prompts + EXCLUDED.prompts,
             gpu_s = gw_queue_usage.gpu_s + EXCLUDED.gpu_s, images = gw_queue_usage.images + EXCLUDED.images`,
            [o.owner, o.day, o.prompts, o.gpu_s, o.images],
          );
          await notify(c, 'usage', `${o.owner}|${o.day}`);
        });
    }
  }

  return {
    load: () => loadPgQueue(pool),
    apply,
    // the pool belongs to the shared store, which closes it
    async close() {},
  };
}

/**
 * Moves a held prompt to the failed ones inside the caller's transaction (the store's `failed`, and a refusal
 * nobody took from gw_queue_answers), notifying the other replicas on commit.
 */
export async function recordFailed(c: pg.PoolClient, entry: FailedPrompt, feed?: Pick<ChangeFeed, 'payload'>): Promise<void> {
  await c.query('INSERT INTO gw_queue_failed (id, value) VALUES ($1, $2)', [entry.id, JSON.stringify(entry)]);
  await c.query('DELETE FROM gw_queue_failed WHERE n <= (SELECT max(n) FROM gw_queue_failed) - $1', [MAX_FAILED]);
  await c.query('DELETE FROM gw_queue_held WHERE id = $1', [entry.id]);
  // the refusal first: a follower tells the owner while the prompt is still in its view
  for (const what of ['failed', 'held'])
    if (feed) await c.query('SELECT pg_notify($1, $2)', [CHANGE_CHANNEL, feed.payload('queue', entry.id, what)]);
}

/** Reads the whole queue state (start-up, and a replica's resync after its change feed came back). */
export async function loadPgQueue(pool: pg.Pool | pg.PoolClient): Promise<QueueState> {
  const state = emptyState();
  const held = await q<{ value: HeldPrompt }>(pool, 'SELECT value FROM gw_queue_held ORDER BY seq, id');
  state.held = held.rows.map((r) => r.value);
  const failed = await q<{ value: FailedPrompt }>(pool, 'SELECT value FROM gw_queue_failed ORDER BY n');
  state.failed = failed.rows.map((r) => r.value);
  const limits = await q<{ owner: string; value: LimitOverride }>(pool, 'SELECT owner, value FROM gw_queue_limits');
  for (const r of limits.rows) state.limits[r.owner] = r.value;
  const usage = await q<{ owner: string; day: string; prompts: string; gpu_s: number; images: string }>(
    pool,
    'SELECT owner, day, prompts, gpu_s, images FROM gw_queue_usage ORDER BY day, owner',
  );
  state.usage = usage.rows.map((r) => ({
    owner: r.owner,
    day: r.day,
    prompts: Number(r.prompts),
    gpu_s: r.gpu_s,
    images: Number(r.images),
  }));
  const next = await q<{ value: number }>(pool, 'SELECT value FROM gw_meta WHERE key = $1', [NEXT_SEQ_KEY]);
  state.nextSeq = Math.max(1, Number(next.rows[0]?.value ?? 1), ...state.held.map((p) => Math.max(p.seq, p.number) + 1));
  return state;
}

/** Writes a whole queue state into an empty queue (migrate-store, inside its transaction). */
export async function copyQueueState(c: pg.PoolClient, s: QueueState): Promise<void> {
  for (const p of s.held) await c.query('INSERT INTO gw_queue_held (id, seq, value) VALUES ($1, $2, $3)', [p.id, p.seq, JSON.stringify(p)]);
  for (const f of s.failed.slice(-MAX_FAILED))
    await c.query('INSERT INTO gw_queue_failed (id, value) VALUES ($1, $2)', [f.id, JSON.stringify(f)]);
  for (const [owner, l] of Object.entries(s.limits))
    await c.query('INSERT INTO gw_queue_limits (owner, value) VALUES ($1, $2)', [owner, JSON.stringify(l)]);
  for (const u of s.usage)
    await c.query('INSERT INTO gw_queue_usage (owner, day, prompts, gpu_s, images) VALUES ($1, $2, $3, $4, $5)', [
      u.owner,
      u.day,
      u.prompts,
      u.gpu_s,
      u.images,
    ]);
  await c.query(
    'INSERT INTO gw_meta (key, value) VALUES ($1, to_jsonb($2::bigint)) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value',
    [NEXT_SEQ_KEY, s.nextSeq],
  );
}

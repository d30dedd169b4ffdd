import type pg from 'pg';
import type { Logger } from '../log';
import type { UpstreamResponse } from '../proxy/upstream';
import { CHANGE_CHANNEL, type ChangeFeed } from '../store/feed';
import { q, withTx } from '../store/pg';
import { recordFailed } from './pgStore';
import { failedPrompt, refusalOf } from './prompts';
import type { Scheduler } from './scheduler';
import type { FailedPrompt, HeldPrompt } from './store';

/** How long past the submitter's own deadline an answer nobody took is kept before a refusal counts as failed. */
const GRACE_MS = 2000;
/** How often the releaser looks again while answers are left (none left: only when one it wrote expires). */
const SWEEP_MS = 1000;

/** An answer as gw_queue_answers keeps it; a refusal also carries what to record if nobody takes it. */
interface Stored {
  status: number;
  type?: string;
  /** base64 */
  body: string;
  failed?: FailedPrompt;
  prompt?: HeldPrompt;
}

/** ComfyUI's answers to releases, passed from the releasing replica to the replica where the submitter waits. */
export interface Answers {
  /**
   * A replica that does not release: marks `p` (before it is persisted) as answered here until `ms` from now, and
   * resolves with ComfyUI's answer to its release, or null when it is held ("later", deadline, or answer lost).
   */
  ask(p: HeldPrompt, ms: number): Promise<UpstreamResponse | null>;
  /**
   * The releaser: how ComfyUI's answer reaches p's submitter on another replica (undefined: nobody waits for it); the
   * function also takes p out of the held ones, and resolves false (logged) when it could not.
   */
  relay(p: HeldPrompt): ((up: UpstreamResponse) => Promise<boolean>) | undefined;
  /** the releaser: p is not released at once, so its submitter is answered "held" now and nobody waits for it */
  later(p: HeldPrompt): void;
  /** the releaser records a refusal nobody took (the submitter's replica died or gave up): `expired` tells this one's sockets */
  start(expired: (f: FailedPrompt, p: HeldPrompt) => void): void;
  close(): void;
}

/** Whether `p` would be the next to leave if it were held now (a follower's view: limits are the releaser's to check). */
export function wouldLead(scheduler: Scheduler, p: HeldPrompt): boolean {
  if (scheduler.get(p.id)) return scheduler.peek()?.id === p.id;
  scheduler.add(p);
  const lead = scheduler.peek()?.id === p.id;
  scheduler.remove(p.id);
  return lead;
}

/**
 * One replica's side of answers (README: "Replicas that do not release"). The releaser writes ComfyUI's answer into
 * gw_queue_answers in the statement that takes the prompt out of the held ones, and notifies; the waiting replica
 * takes it with a DELETE, so exactly one of "the client got it" and "recorded as failed by the sweep" happens.
 */
export function createAnswers(deps: {
  pool: pg.Pool;
  feed: Pick<ChangeFeed, 'origin' | 'payload' | 'on'>;
  logger: Logger;
  /** whether this replica holds the releaser lease now (only the releaser sweeps) */
  releasing: () => boolean;
}): Answers {
  const { pool, feed, logger } = deps;
  const origin = feed.origin;
  const waiting = new Map<string, { claiming: boolean; settle: (up: UpstreamResponse | null) => void }>();
  let expired: ((f: FailedPrompt, p: HeldPrompt) => void) | null = null;
  let timer: NodeJS.Timeout | null = null;
  let sweeping = false;
  // when the next sweep is due (a replica that just took the lease over sweeps at once: the last releaser's rows)
  let due = Infinity;
  let wasReleasing = false;

  /** Takes this replica's answer for `id` (a refusal left for the sweep is not this replica's any more once taken). */
  async function take(id: string): Promise<void> {
    const w = waiting.get(id);
    if (!w || w.claiming) return;
    w.claiming = true;
    try {
      const r = await q<{ value: Stored }>(pool, 'DELETE FROM gw_queue_answers WHERE id = $1 AND replica = $2 RETURNING value', [
        id,
        origin,
      ]);
      const v = r.rows[0]?.value;
      w.settle(v ? { status: v.status, headers: v.type ? { 'content-type': v.type } : {}, body: Buffer.from(v.body, 'base64') } : null);
    } catch (e) {
      // left for the sweep: a refusal is then recorded as failed, which is what a "held" answer promises
      logger.warn({ err: (e as Error).message, prompt: id }, 'queue: could not take the answer of a released prompt');
      w.settle(null);
    }
  }

  feed.on((ch) => {
    if (ch.k !== 'queue' || !waiting.has(ch.id)) return;
    if (ch.c === 'answer') void take(ch.id);
    else if (ch.c === 'later' && !waiting.get(ch.id)!.claiming) waiting.get(ch.id)!.settle(null);
  });

  const notify = (c: pg.PoolClient | pg.Pool, id: string, what: string) =>
    q(c, 'SELECT pg_notify($1, $2)', [CHANGE_CHANNEL, feed.payload('queue', id, what)]);

  async function sweep(): Promise<void> {
    const gone: Stored[] = [];
    const more = await withTx(pool, async (c) => {
      const r = await c.query<{ value: Stored }>('DELETE FROM gw_queue_answers WHERE expires < now() RETURNING value');
      for (const { value } of r.rows) {
        if (!value.failed || !value.prompt) continue;
        await recordFailed(c, value.failed, feed);
        gone.push(value);
      }
      return (await c.query('SELECT 1 FROM gw_queue_answers LIMIT 1')).rows.length > 0;
    });
    if (more) due = Math.min(due, Date.now() + SWEEP_MS);
    for (const v of gone) {
      logger.info({ prompt: v.prompt!.id }, 'queue: nobody took the refusal of a released prompt; recorded as failed');
      expired?.(v.failed!, v.prompt!);
    }
  }

  return {
    ask(p, ms) {
      p.answerTo = { replica: origin, until: Date.now() + ms };
      return new Promise((resolve) => {
        const t = setTimeout(() => {
          // an answer being taken decides (so a refusal is never both answered and lost)
          if (!waiting.get(p.id)?.claiming) settle(null);
        }, ms);
        const settle = (up: UpstreamResponse | null) => {
          clearTimeout(t);
          waiting.delete(p.id);
          resolve(up);
        };
        waiting.set(p.id, { claiming: false, settle });
      });
    },
    relay(p) {
      const to = p.answerTo;
      if (!to || to.until <= Date.now()) return undefined;
      return async (up) => {
        const v: Stored = {
          status: up.status,
          type: typeof up.headers['content-type'] === 'string' ? up.headers['content-type'] : undefined,
          body: up.body.toString('base64'),
          ...(up.status === 200 ? {} : { failed: failedPrompt(p, refusalOf(up)), prompt: p }),
        };
        // one statement, so one round trip and atomic: out of the held ones, the answer in, both notified on commit
        const ok = await q(
          pool,
          `WITH gone AS (DELETE FROM gw_queue_held WHERE id = $1),
                put AS (INSERT INTO gw_queue_answers (id, replica, expires, value)
                        VALUES ($1, $2, now() + $3 * interval '1 millisecond', $4)
                        ON CONFLICT (id) DO UPDATE SET replica = EXCLUDED.replica, expires = EXCLUDED.expires, value = EXCLUDED.value)
           SELECT pg_notify($5, $6), pg_notify($5, $7)`,
          [
            p.id,
            to.replica,
            Math.max(0, to.until - Date.now()) + GRACE_MS,
            JSON.stringify(v),
            CHANGE_CHANNEL,
            feed.payload('queue', p.id, 'held'),
            feed.payload('queue', p.id, 'answer'),
          ],
        ).then(
          () => true,
          (e: Error) => (logger.warn({ err: e.message, prompt: p.id }, 'queue: could not pass on the answer of a released prompt'), false),
        );
        if (ok) due = Math.min(due, to.until + GRACE_MS + 50);
        // (this replica asked before it took the lease over: its own notifications do not come back to it)
        if (ok && to.replica === origin) void take(p.id);
        return ok;
      };
    },
    later(p) {
      const to = p.answerTo;
      if (!to) return;
      p.answerTo = undefined;
      if (to.replica === origin) return void waiting.get(p.id)?.settle(null);
      notify(pool, p.id, 'later').catch((e: Error) => logger.debug({ err: e.message }, 'queue: "held" answer not sent'));
    },
    start(h) {
      expired = h;
      timer = setInterval(() => {
        const releasing = deps.releasing();
        if (releasing && !wasReleasing) due = 0;
        wasReleasing = releasing;
        if (sweeping || !releasing || Date.now() < due) return;
        sweeping = true;
        due = Infinity;
        sweep()
          .catch((e: Error) => {
            due = Date.now() + SWEEP_MS;
            logger.warn({ err: e.message }, 'queue: sweep of unanswered prompts failed');
          })
          .finally(() => (sweeping = false));
      }, SWEEP_MS / 4);
      timer.unref();
    },
    close() {
      if (timer) clearInterval(timer);
      for (const w of [...waiting.values()]) w.settle(null);
    },
  };
}

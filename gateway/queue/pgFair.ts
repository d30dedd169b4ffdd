import type pg from 'pg';
import type { Logger } from '../log';
import { q } from '../store/pg';
import type { FairState } from './scheduler';

/** The gw_meta key of the round robin's state, written by the releaser after each release. */
export const FAIR_KEY = 'queue:fair';

/**
 * The fair share across a change of releaser: the releaser saves where its round robin stands after each release
 * (one write in flight at most: a newer state waiting replaces the older), and the replica that takes the lease
 * over reads it before its first release, so no user gets two turns in a row because the releaser changed.
 */
export function createFairStore(deps: { pool: pg.Pool; logger: Logger }) {
  let latest: FairState | null = null;
  let writing = false;

  async function flush(): Promise<void> {
    writing = true;
    while (latest) {
      const s = latest;
      latest = null;
      await q(deps.pool, 'INSERT INTO gw_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value', [
        FAIR_KEY,
        JSON.stringify(s),
      ]).catch((e: Error) => deps.logger.warn({ err: e.message }, 'queue: could not save the fair-share state'));
    }
    writing = false;
  }

  return {
    /** saves the state soon (the newest one wins) */
    save(s: FairState): void {
      latest = s;
      if (!writing) void flush();
    },
    /** the state the last releaser saved (a fresh round robin when none) */
    async load(): Promise<FairState> {
      const r = await q<{ value: FairState }>(deps.pool, 'SELECT value FROM gw_meta WHERE key = $1', [FAIR_KEY]);
      const v = r.rows[0]?.value;
      return v && typeof v.now === 'number' && v.pass && typeof v.pass === 'object' ? v : { now: 0, pass: {} };
    },
  };
}

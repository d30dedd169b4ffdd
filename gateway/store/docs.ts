import type pg from 'pg';
import type { Logger } from '../log';
import type { ChangeFeed } from './feed';
import { q, withTx } from './pg';

/**
 * A named set of JSON documents in PostgreSQL (gw_docs), for records whose shape another part owns: the prompt
 * ledger, ComfyUI user ids, HF tokens. Each replica keeps what it needs in memory; a write anywhere reaches the
 * others' `onRemote` within milliseconds, and after the change feed reconnects `onReset` hands over everything.
 */
export interface DocCollection<T> {
  all(): Promise<Map<string, T>>;
  get(key: string): Promise<T | undefined>;
  /** writes (or with `undefined`, deletes) several documents in one transaction */
  write(entries: [string, T | undefined][]): Promise<void>;
  /** a document another replica wrote (undefined: deleted) */
  onRemote(handler: (key: string, value: T | undefined) => void): void;
  /** the whole collection after the feed came back (changes may have been missed meanwhile) */
  onReset(handler: (all: Map<string, T>) => void): void;
}

/** The documents of one database. */
export interface Docs {
  collection<T>(name: string): DocCollection<T>;
}

/** Builds the document collections over the pool and the change feed. */
export function createDocs(deps: { pool: pg.Pool; feed: ChangeFeed; logger?: Logger }): Docs {
  const { pool, feed } = deps;
  const collections = new Map<string, DocCollection<unknown>>();
  return {
    collection<T>(name: string): DocCollection<T> {
      const known = collections.get(name);
      if (known) return known as DocCollection<T>;
      const remotes: ((key: string, value: T | undefined) => void)[] = [];
      const resets: ((all: Map<string, T>) => void)[] = [];
      const get = async (key: string) =>
        (await q<{ value: T }>(pool, 'SELECT value FROM gw_docs WHERE coll = $1 AND key = $2', [name, key])).rows[0]?.value;
      const all = async () => {
        const r = await q<{ key: string; value: T }>(pool, 'SELECT key, value FROM gw_docs WHERE coll = $1 ORDER BY seq', [name]);
        return new Map(r.rows.map((x) => [x.key, x.value]));
      };
      let applying: Promise<void> = Promise.resolve();
      feed.on((c) => {
        if (c.k !== 'doc' || c.c !== name || !remotes.length) return;
        applying = applying.then(async () => {
          try {
            const v = await get(c.id);
            for (const h of remotes) h(c.id, v);
          } catch (err) {
            deps.logger?.error({ err, collection: name }, 'could not read a document another replica wrote');
          }
        });
      });
      feed.onResync(async () => {
        if (!resets.length) return;
        const everything = await all();
        for (const h of resets) h(everything);
      });
      const coll: DocCollection<T> = {
        all,
        get,
        async write(entries) {
          if (!entries.length) return;
          await withTx(pool, async (c) => {
            for (const [key, value] of entries) {
              if (value === undefined) await c.query('DELETE FROM gw_docs WHERE coll = $1 AND key = $2', [name, key]);
              else
                await c.query(
                  `INSERT INTO gw_docs (coll, key, value) VALUES ($1, $2, $3)
                   ON CONFLICT (coll, key) DO UPDATE SET value = EXCLUDED.value`,
                  [name, key, JSON.stringify(value)],
                );
              await c.query('SELECT pg_notify($1, $2)', ['gw_change', feed.payload('doc', key, name)]);
            }
          });
        },
        onRemote: (h) => void remotes.push(h),
        onReset: (h) => void resets.push(h),
      };
      collections.set(name, coll as DocCollection<unknown>);
      return coll;
    },
  };
}

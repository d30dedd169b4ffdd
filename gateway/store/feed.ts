import crypto from 'node:crypto';
import pg from 'pg';
import type { Logger } from '../log';

/** The channel every replica LISTENs on; writers pg_notify it inside their transaction (delivered on commit). */
export const CHANGE_CHANNEL = 'gw_change';

/** One change another replica (or this one) committed: what kind of record, and which. */
export interface Change {
  /** the writing replica (its own changes are already in its cache) */
  o: string;
  k: 'user' | 'token' | 'jti' | 'meta' | 'doc' | 'queue';
  /** the record's key (username, token id, jti, meta key, doc key) */
  id: string;
  /** the document collection, for k = 'doc' */
  c?: string;
}

/**
 * The replicas' cache invalidation: one LISTEN connection per replica. While it is up, caches built on it are fresh
 * (every commit elsewhere arrives within milliseconds); once it drops they are not, and readers must refuse
 * (STORE_UNAVAILABLE) until it is back and `onResync` handlers reloaded everything — never serve a stale answer.
 */
export interface ChangeFeed {
  /** this replica's id, put in every notification it sends */
  readonly origin: string;
  fresh(): boolean;
  /** hears changes made by other replicas */
  on(handler: (c: Change) => void): void;
  /** runs after every (re)connection, before fresh() turns true again: reload whole caches */
  onResync(handler: () => Promise<void>): void;
  /** the SQL-ready notification payload for a change made here */
  payload(k: Change['k'], id: string, c?: string): string;
  close(): Promise<void>;
}

/** Connects the LISTEN client (and keeps reconnecting, with a heartbeat that notices a silent server). */
export async function createChangeFeed(opts: { url: string; logger?: Logger; heartbeatMs?: number }): Promise<ChangeFeed> {
  const origin = crypto.randomUUID();
  const handlers: ((c: Change) => void)[] = [];
  const resyncs: (() => Promise<void>)[] = [];
  let client: pg.Client | null = null;
  let fresh = false;
  let closed = false;
  let retry: NodeJS.Timeout | null = null;
  const heartbeatMs = opts.heartbeatMs ?? 1000;

  const lost = (why: string) => {
    if (!fresh && !client) return;
    if (fresh) opts.logger?.error({ why }, 'lost the PostgreSQL change feed; refusing reads until it is back');
    fresh = false;
    const c = client;
    client = null;
    c?.end().catch(() => undefined);
    schedule();
  };
  const schedule = () => {
    if (closed || retry) return;
    retry = setTimeout(() => {
      retry = null;
      connect().catch(() => schedule());
    }, 500);
    retry.unref();
  };

  async function connect(): Promise<void> {
    const c = new pg.Client({ connectionString: opts.url, connectionTimeoutMillis: 3000, query_timeout: 3000 });
    c.on('error', (e) => lost(e.message));
    c.on('end', () => lost('connection ended'));
    c.on('notification', (n) => {
      if (n.channel !== CHANGE_CHANNEL || !n.payload) return;
      let ch: Change;
      try {
        ch = JSON.parse(n.payload) as Change;
      } catch {
        return;
      }
      if (ch.o === origin) return;
      for (const h of handlers) {
        try {
          h(ch);
        } catch (err) {
          opts.logger?.error({ err, change: ch }, 'applying a change from another replica failed');
        }
      }
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${CHANGE_CHANNEL}`);
      client = c;
      // Listening first, then reloading: a change committed in between is seen by one or the other.
      for (const r of resyncs) await r();
      if (client !== c) throw new Error('change feed lost while reloading');
    } catch (e) {
      client = null;
      await c.end().catch(() => undefined);
      throw e;
    }
    if (closed) return void (await c.end().catch(() => undefined));
    if (!fresh) opts.logger?.info('PostgreSQL change feed connected');
    fresh = true;
  }

  // A server that stopped answering (a blocked network) sends no 'end': ask it something every heartbeat.
  const beat = setInterval(() => {
    const c = client;
    if (!c || !fresh) return;
    c.query('SELECT 1').catch((e: Error) => lost(e.message));
  }, heartbeatMs);
  beat.unref();

  await connect();
  return {
    origin,
    fresh: () => fresh,
    on: (h) => void handlers.push(h),
    onResync: (h) => void resyncs.push(h),
    payload: (k, id, c) => JSON.stringify({ o: origin, k, id, ...(c ? { c } : {}) } satisfies Change),
    async close() {
      closed = true;
      fresh = false;
      clearInterval(beat);
      if (retry) clearTimeout(retry);
      const c = client;
      client = null;
      await c?.end().catch(() => undefined);
    },
  };
}

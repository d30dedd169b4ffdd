import { Kysely, Migrator, PostgresDialect, sql, type Migration, type MigrationProvider } from 'kysely';
import pg from 'pg';
import { AppError } from '../errors';
import { MIGRATIONS } from './migrations';

/** The shared store cannot be reached or did not answer: refuse (503), never fall open. */
export const storeUnavailable = (why = 'The shared store (PostgreSQL) is not reachable right now; try again shortly') =>
  new AppError(503, 'STORE_UNAVAILABLE', why);

/** Whether an error means "the database is not there" (as opposed to a constraint or a bug). */
export function isConnectionError(e: unknown): boolean {
  const err = e as { code?: string; message?: string } | null;
  if (!err) return false;
  if (typeof err.code === 'string') {
    // 08xxx connection exceptions, 57P0x admin shutdown / cannot connect now, 53xxx insufficient resources
    if (/^(08|57P|53)/.test(err.code)) return true;
    if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH'].includes(err.code)) return true;
  }
  return /Connection terminated|connection timeout|Client has encountered a connection error|not queryable/i.test(err.message ?? '');
}

/** A pool sized for a gateway replica; every query is bounded so a stalled server gives 503, not a hung request. */
export function createPool(url: string): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: 10,
    connectionTimeoutMillis: 3000,
    idleTimeoutMillis: 30_000,
    query_timeout: 5000,
  });
  // An idle client losing its server must not crash the process; the next query reports it.
  pool.on('error', () => undefined);
  return pool;
}

/** Runs `fn` in one transaction: everything or nothing; connection failures become STORE_UNAVAILABLE. */
export async function withTx<T>(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (e) {
    throw isConnectionError(e) || !(e instanceof AppError) ? storeUnavailable() : e;
  }
  let broken = false;
  // pg-pool drops its own error listener while a client is checked out: a server lost mid-transaction would emit an
  // unhandled 'error' (an uncaught exception). The query in flight is rejected anyway; this only marks the client.
  const lost = () => {
    broken = true;
  };
  client.on('error', lost);
  try {
    await client.query('BEGIN');
    const out = await fn(client);
    await client.query('COMMIT');
    return out;
  } catch (e) {
    broken = isConnectionError(e);
    if (!broken) await client.query('ROLLBACK').catch(() => (broken = true));
    throw broken ? storeUnavailable() : e;
  } finally {
    client.removeListener('error', lost);
    client.release(broken);
  }
}

/** One query outside a transaction; connection failures become STORE_UNAVAILABLE. */
export async function q<R extends pg.QueryResultRow = pg.QueryResultRow>(
  pool: pg.Pool | pg.PoolClient,
  text: string,
  values: unknown[] = [],
): Promise<pg.QueryResult<R>> {
  try {
    return await pool.query<R>(text, values);
  } catch (e) {
    throw isConnectionError(e) ? storeUnavailable() : e;
  }
}

/** Serialises migrations of every replica starting at once (any 64-bit constant shared by all of them). */
const MIGRATION_LOCK = 7_254_131_301;

/**
 * Brings the schema up to date, holding a session-level pg_advisory_lock so that replicas starting together take
 * turns (kysely's own lock table would do too, but the advisory lock also covers the lock table's creation).
 */
export async function migrate(url: string): Promise<string[]> {
  const pool = new pg.Pool({ connectionString: url, max: 1, connectionTimeoutMillis: 5000 });
  pool.on('error', () => undefined);
  const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
  try {
    return await db.connection().execute(async (conn) => {
      await sql`SELECT pg_advisory_lock(${MIGRATION_LOCK})`.execute(conn);
      try {
        const provider: MigrationProvider = { getMigrations: async () => MIGRATIONS as Record<string, Migration> };
        const { error, results } = await new Migrator({ db: conn, provider, migrationTableName: 'gw_migrations' }).migrateToLatest();
        if (error) throw error;
        return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
      } finally {
        await sql`SELECT pg_advisory_unlock(${MIGRATION_LOCK})`.execute(conn);
      }
    });
  } finally {
    await db.destroy();
  }
}

import crypto from 'node:crypto';
import pg from 'pg';

/** The server the tests use (the machines' PostgreSQL; `.ci/run` starts it where it is not running). */
export const PG_ADMIN_URL = process.env.CGW_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** A database of this test run's own, dropped afterwards. */
export interface TestDatabase {
  url: string;
  name: string;
  drop(): Promise<void>;
}

/**
 * Creates `gw_<random>` on the test server. A missing server fails the test loudly (it is never skipped): these
 * tests are what proves the shared store works.
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `gw_${crypto.randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 5000 });
  try {
    await admin.connect();
  } catch (e) {
    throw new Error(
      `PostgreSQL is not reachable at ${PG_ADMIN_URL} (${(e as Error).message}); start it (.ci/run does) — these tests do not skip`,
    );
  }
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(PG_ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    name,
    async drop() {
      const c = new pg.Client({ connectionString: PG_ADMIN_URL });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/** Polls `check` until it returns true (or a value), failing after `ms`. */
export async function eventually<T>(check: () => T | Promise<T>, ms = 5000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${ms} ms${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

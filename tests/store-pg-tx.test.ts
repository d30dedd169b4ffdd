/**
 * gateway/store/pg.ts withTx: PostgreSQL lost in the middle of a transaction is a STORE_UNAVAILABLE refusal, never an
 * unhandled 'error' event (pg-pool removes its own listener while a client is checked out). Real PostgreSQL behind a
 * TCP relay the test cuts.
 */
import { createPool, withTx } from '../gateway/store/pg';
import { createTestDatabase, type TestDatabase } from './helpers/pg';
import { startTcpProxy, type TcpProxy } from './helpers/tcpProxy';

let db: TestDatabase;
let relay: TcpProxy;

beforeAll(async () => {
  db = await createTestDatabase();
  relay = await startTcpProxy('127.0.0.1', Number(new URL(db.url).port || 5432));
});
afterAll(async () => {
  await relay?.close();
  await db?.drop();
});

test('the connection cut while a transaction holds its client: STORE_UNAVAILABLE, no uncaught error, the pool recovers', async () => {
  const pool = createPool(relay.via(db.url));
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  try {
    expect(await withTx(pool, async (c) => (await c.query('SELECT 1 AS one')).rows[0].one)).toBe(1);
    const cutInside = withTx(pool, async (c) => {
      await c.query('SELECT 1');
      const ended = new Promise((r) => c.once('end', r));
      relay.block(); // the server "goes away" between two statements of this transaction
      await ended; // the client has heard the socket close (and emitted 'error') while checked out
      await c.query('SELECT 2');
    });
    await expect(cutInside).rejects.toMatchObject({ status: 503, code: 'STORE_UNAVAILABLE' });
    expect(uncaught).toEqual([]);
    relay.unblock();
    expect(await withTx(pool, async (c) => (await c.query('SELECT 3 AS three')).rows[0].three)).toBe(3);
  } finally {
    process.off('uncaughtException', onUncaught);
    relay.unblock();
    await pool.end();
  }
});

/**
 * Issue 13 (queue/answers.ts) on a real PostgreSQL, two replicas' answer channels in one process (each with its own
 * change feed): the releaser's answer reaches the replica that asked and is taken exactly once; "later" frees the
 * asker at once; a refusal nobody takes is recorded as failed by the releaser's sweep once it expires — and one
 * that was taken never is.
 */
import pg from 'pg';
import { createLogger } from '../gateway/log';
import { createAnswers, type Answers } from '../gateway/queue/answers';
import type { FailedPrompt, HeldPrompt } from '../gateway/queue/store';
import { createChangeFeed, type ChangeFeed } from '../gateway/store/feed';
import { migrate } from '../gateway/store/pg';
import { createTestDatabase, eventually, type TestDatabase } from './helpers/pg';
import { heldPrompt } from './helpers/queue';

jest.setTimeout(60_000);

const logger = createLogger({ levels: ['silent'], file: null, stdout: false });
let db: TestDatabase;
let pool: pg.Pool;
const feeds: ChangeFeed[] = [];
let releaser: Answers;
let follower: Answers;
const expired: { f: FailedPrompt; p: HeldPrompt }[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  await migrate(db.url);
  pool = new pg.Pool({ connectionString: db.url, max: 4 });
  for (let i = 0; i < 2; i++) feeds.push(await createChangeFeed({ url: db.url, logger }));
  releaser = createAnswers({ pool, feed: feeds[0], logger, releasing: () => true });
  follower = createAnswers({ pool, feed: feeds[1], logger, releasing: () => false });
  releaser.start((f, p) => expired.push({ f, p }));
  follower.start(() => {
    throw new Error('only the releaser sweeps');
  });
});
afterAll(async () => {
  releaser?.close();
  follower?.close();
  for (const f of feeds) await f.close();
  await pool?.end();
  await db?.drop();
});

const refusal = {
  status: 400,
  headers: { 'content-type': 'application/json' },
  body: Buffer.from('{"error":{"type":"x"},"node_errors":{"3":{}}}'),
};
const rows = async (table: string) => (await pool.query(`SELECT id FROM ${table}`)).rows.map((r) => r.id as string);
/** A prompt as the asking replica persists it (its row in gw_queue_held carries answerTo). */
async function held(id: string, ms: number): Promise<{ p: HeldPrompt; answer: Promise<unknown> }> {
  const p = heldPrompt(id, 'k-alice', 1, { body: JSON.stringify({ prompt: {} }) });
  const answer = follower.ask(p, ms);
  await pool.query('INSERT INTO gw_queue_held (id, seq, value) VALUES ($1, 1, $2)', [id, JSON.stringify(p)]);
  // the releaser reads the row as it is (a copy, as through the change feed)
  return { p: JSON.parse(JSON.stringify(p)) as HeldPrompt, answer };
}

test("a refusal passed on is the asker's answer, taken once: out of the held ones, recorded nowhere", async () => {
  const { p, answer } = await held('a1', 5000);
  expect(p.answerTo?.replica).toBe(feeds[1].origin);
  const relay = releaser.relay(p)!;
  expect(await relay(refusal)).toBe(true);
  const up = (await answer) as { status: number; body: Buffer; headers: Record<string, string> };
  expect(up.status).toBe(400);
  expect(JSON.parse(up.body.toString())).toEqual({ error: { type: 'x' }, node_errors: { '3': {} } });
  expect(up.headers['content-type']).toBe('application/json');
  expect(await rows('gw_queue_held')).toEqual([]);
  expect(await rows('gw_queue_answers')).toEqual([]);
  expect(await rows('gw_queue_failed')).toEqual([]);
});

test('"later" answers the asker at once (held), and nobody waits for that prompt any more', async () => {
  const { p, answer } = await held('b1', 20_000);
  const t0 = Date.now();
  releaser.later(p);
  expect(await answer).toBeNull();
  expect(Date.now() - t0).toBeLessThan(10_000);
  expect(releaser.relay(p)).toBeUndefined();
  await pool.query('DELETE FROM gw_queue_held');
});

test('a refusal nobody takes (the asker gone) is recorded as failed once it expires, and told to the releaser', async () => {
  const p = heldPrompt('c1', 'k-alice', 1, {
    body: JSON.stringify({ prompt: {} }),
    answerTo: { replica: 'gone', until: Date.now() + 300 },
  });
  await pool.query('INSERT INTO gw_queue_held (id, seq, value) VALUES ($1, 1, $2)', [p.id, JSON.stringify(p)]);
  expect(await releaser.relay(p)!(refusal)).toBe(true);
  expect(await rows('gw_queue_answers')).toEqual(['c1']);
  await eventually(async () => (await rows('gw_queue_failed')).includes('c1'), 15_000, 'the refusal recorded');
  expect(await rows('gw_queue_answers')).toEqual([]);
  expect(await rows('gw_queue_held')).toEqual([]);
  await eventually(() => expired.some((e) => e.p.id === 'c1'), 5000, 'the releaser told');
  expect(expired.find((e) => e.p.id === 'c1')!.f.error).toEqual({ error: { type: 'x' }, node_errors: { '3': {} } });
});

test('an answer whose asker already gave up (past its deadline) is not passed on: the caller records the refusal', async () => {
  const p = heldPrompt('d1', 'k-alice', 1, { answerTo: { replica: feeds[1].origin, until: Date.now() - 1 } });
  expect(releaser.relay(p)).toBeUndefined();
  expect(releaser.relay(heldPrompt('d2', 'k-alice', 2))).toBeUndefined();
});

test('a replica taking the releaser lease over sweeps at once what the last releaser left (its sweeps died with it)', async () => {
  releaser.close();
  const p = heldPrompt('e1', 'k-bob', 1, { body: JSON.stringify({ prompt: {} }) });
  const v = {
    status: 400,
    body: refusal.body.toString('base64'),
    failed: { id: 'e1', owner: 'k-bob', at: 1, error: {}, prompt: [] },
    prompt: p,
  };
  await pool.query("INSERT INTO gw_queue_answers (id, replica, expires, value) VALUES ('e1', 'gone', now() - interval '1 second', $1)", [
    JSON.stringify(v),
  ]);
  let on = false;
  const told: string[] = [];
  const heir = createAnswers({ pool, feed: feeds[1], logger, releasing: () => on });
  heir.start((_f, x) => told.push(x.id));
  try {
    on = true;
    await eventually(() => told.includes('e1'), 10_000, 'the heir swept');
    expect(await rows('gw_queue_failed')).toContain('e1');
    expect(await rows('gw_queue_answers')).toEqual([]);
  } finally {
    heir.close();
  }
});

/**
 * ONE contract for every QueueStore (issue 12/13): the file journal (data_dir/queue) and PostgreSQL run the same
 * cases. Each case applies operations, then opens a NEW store on the same place (a restart, or another replica)
 * and compares what it loads with the reference semantics (applyOp on an in-memory state).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { createFileQueueStore } from '../gateway/queue/fileStore';
import { createPgQueueStore } from '../gateway/queue/pgStore';
import { applyOp, emptyState, type HeldPrompt, type QueueOp, type QueueStore } from '../gateway/queue/store';
import { openShared, type SharedStore } from '../gateway/store/compose';
import { createTestDatabase, type TestDatabase } from './helpers/pg';
import { heldPrompt } from './helpers/queue';

const logger = pino({ level: 'silent' });

interface Backend {
  open(): QueueStore;
  cleanup(): Promise<void>;
}

const backends: [string, () => Promise<Backend>][] = [
  [
    'file',
    async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-qcontract-'));
      const opened: QueueStore[] = [];
      return {
        open: () => {
          const s = createFileQueueStore({ dir, logger });
          opened.push(s);
          return s;
        },
        async cleanup() {
          for (const s of opened) await s.close();
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  ],
  [
    'postgres',
    async () => {
      const db: TestDatabase = await createTestDatabase();
      const shared: SharedStore[] = [];
      return {
        open: () => {
          // each "open" is a replica of its own: a pool and a change feed of its own
          const s = openShared(db.url, undefined, null);
          let store: QueueStore | null = null;
          const ready = s.then((x) => {
            shared.push(x);
            return (store = createPgQueueStore({ pool: x.pool, feed: x.feed }));
          });
          return {
            load: async () => (await ready).load(),
            apply: async (o) => (await ready).apply(o),
            close: async () => store?.close(),
          };
        },
        async cleanup() {
          for (const s of shared) {
            await s.feed.close();
            await s.pool.end();
          }
          await db.drop();
        },
      };
    },
  ],
];

const held = (id: string, owner: string, seq: number, extra: Partial<HeldPrompt> = {}): HeldPrompt =>
  heldPrompt(id, owner, seq, {
    at: 1_700_000_000_000 + seq,
    // isolation's exact text: a seed beyond 2^53 must come back digit for digit
    body: '{"prompt":{"1":{"class_type":"X","inputs":{"seed":12345678901234567890}}}}',
    comfyUser: 'cu-' + owner,
    clientId: 'c-' + id,
    upstreamClientId: 'u-' + id,
    ...extra,
  });

/** Applies `ops` to a fresh store, then loads them from another one and checks both against the reference. */
async function roundTrip(b: Backend, ops: QueueOp[]) {
  const s = b.open();
  await s.load();
  for (const o of ops) await s.apply(o);
  await s.close();
  const ref = emptyState();
  for (const o of ops) applyOp(ref, structuredClone(o));
  const got = await b.open().load();
  // the order held prompts load in is free (dispatcher.restore sorts them by seq): compare in seq order
  const bySeq = (x: HeldPrompt, y: HeldPrompt) => x.seq - y.seq;
  got.held.sort(bySeq);
  ref.held.sort(bySeq);
  return { got, ref };
}

describe.each(backends)('%s queue store', (_name, make) => {
  let b: Backend;
  beforeEach(async () => {
    b = await make();
  });
  afterEach(async () => {
    await b.cleanup();
  });

  test('an empty store loads an empty state that hands out 1 first', async () => {
    const st = await b.open().load();
    expect(st).toEqual(emptyState());
  });

  test('held prompts come back with every field (in seq order); dropped ones are gone; seq never goes back', async () => {
    const ops: QueueOp[] = [
      { op: 'hold', prompt: held('b', 'k2', 2) },
      { op: 'hold', prompt: held('a', 'k1', 1, { front: true, role: 'admin', comfyUser: null, clientId: '' }) },
      { op: 'hold', prompt: held('c', 'k1', 3) },
      { op: 'hold', prompt: held('d', 'k3', 7) },
      { op: 'drop', ids: ['c', 'd', 'never-held'] },
    ];
    const { got, ref } = await roundTrip(b, ops);
    expect(got.held.map((p) => p.id)).toEqual(['a', 'b']);
    expect(got.held).toEqual(ref.held);
    expect(got.held[1].body).toContain('12345678901234567890');
    // prompt 7 left, but a new prompt must never reuse its number
    expect(got.nextSeq).toBe(8);
    expect(ref.nextSeq).toBe(8);
  });

  test('a re-held prompt (admin reorder: drop then hold with a new seq) keeps one row at its new place', async () => {
    const ops: QueueOp[] = [
      { op: 'hold', prompt: held('a', 'k1', 1) },
      { op: 'hold', prompt: held('b', 'k1', 2) },
      { op: 'drop', ids: ['b'] },
      { op: 'hold', prompt: held('b', 'k1', -1) },
    ];
    const { got } = await roundTrip(b, ops);
    expect(got.held.map((p) => [p.id, p.seq])).toEqual([
      ['b', -1],
      ['a', 1],
    ]);
  });

  test('a refused held prompt moves to the failed ones in one step; failed prompts are kept in order until dropped', async () => {
    const f = (id: string) => ({
      id,
      owner: 'k1',
      at: 5,
      error: { error: { type: 'prompt_refused', message: 'no' } },
      prompt: [1, id, {}],
    });
    const { got, ref } = await roundTrip(b, [
      { op: 'hold', prompt: held('x', 'k1', 1) },
      { op: 'hold', prompt: held('w', 'k1', 2) },
      { op: 'failed', entry: f('x') },
      { op: 'failed', entry: f('y') },
      { op: 'failed', entry: f('z') },
      { op: 'drop', ids: ['y'] },
    ]);
    expect(got.failed).toEqual(ref.failed);
    expect(got.failed.map((x) => x.id)).toEqual(['x', 'z']);
    expect(got.held.map((p) => p.id)).toEqual(['w']);
    expect(ref.held.map((p) => p.id)).toEqual(['w']);
  });

  test('limit overrides are set, replaced and removed', async () => {
    const { got, ref } = await roundTrip(b, [
      { op: 'limits', owner: 'k1', limits: { max_waiting: 1, max_running: null, per_day: 5 } },
      { op: 'limits', owner: 'k2', limits: { max_waiting: 2, max_running: 1, per_day: null } },
      { op: 'limits', owner: 'k1', limits: { max_waiting: 3, max_running: 0, per_day: null } },
      { op: 'limits', owner: 'k2', limits: null },
    ]);
    expect(got.limits).toEqual(ref.limits);
    expect(got.limits).toEqual({ k1: { max_waiting: 3, max_running: 0, per_day: null } });
  });

  test('usage adds up per user per day (prompts, GPU seconds, images)', async () => {
    const { got, ref } = await roundTrip(b, [
      { op: 'usage', owner: 'k1', day: '2026-12-05', prompts: 1, gpu_s: 0, images: 0 },
      { op: 'usage', owner: 'k1', day: '2026-12-05', prompts: 0, gpu_s: 2.5, images: 2 },
      { op: 'usage', owner: 'k1', day: '2026-12-06', prompts: 1, gpu_s: 0, images: 0 },
      { op: 'usage', owner: 'k2', day: '2026-12-05', prompts: 3, gpu_s: 0.25, images: 1 },
    ]);
    const sort = (rows: typeof got.usage) => [...rows].sort((x, y) => x.day.localeCompare(y.day) || x.owner.localeCompare(y.owner));
    expect(sort(got.usage)).toEqual(sort(ref.usage));
    expect(sort(got.usage)[0]).toEqual({ owner: 'k1', day: '2026-12-05', prompts: 1, gpu_s: 2.5, images: 2 });
  });

  test('operations applied at once all count, and a store opened beside the writer (a replica, or the next process) sees them', async () => {
    const one = b.open();
    const two = b.open();
    await Promise.all([one.load(), two.load()]);
    await Promise.all([
      ...Array.from({ length: 10 }, () => one.apply({ op: 'usage', owner: 'k', day: '2026-12-06', prompts: 1, gpu_s: 0, images: 0 })),
      one.apply({ op: 'hold', prompt: held('p1', 'k', 1) }),
    ]);
    await one.close();
    await two.close();
    // the file store is one process's: the second store only sees the first's writes after a reopen
    const st = await b.open().load();
    expect(st.usage).toEqual([{ owner: 'k', day: '2026-12-06', prompts: 10, gpu_s: 0, images: 0 }]);
    expect(st.held.map((p) => p.id)).toEqual(['p1']);
  });
});

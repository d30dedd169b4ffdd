/** Issue 12: the queue's journal store (crash-safe replay, compaction) and the scheduler's order, on real files. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { createFileQueueStore } from '../gateway/queue/fileStore';
import { createScheduler } from '../gateway/queue/scheduler';
import { heldPrompt } from './helpers/queue';

const logger = pino({ level: 'silent' });
const held = heldPrompt;

describe('file queue store', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-qstore-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('what was applied is there after a reopen; a torn last line is skipped and the journal starts clean', async () => {
    const s = createFileQueueStore({ dir, logger });
    await s.load();
    await s.apply({ op: 'hold', prompt: held('a', 'k1', 1) });
    await s.apply({ op: 'hold', prompt: held('b', 'k2', 2) });
    await s.apply({ op: 'drop', ids: ['a'] });
    await s.apply({ op: 'usage', owner: 'k1', day: '2026-01-01', prompts: 1, gpu_s: 2.5, images: 1 });
    await s.close();
    fs.appendFileSync(path.join(dir, 'queue.journal'), '{"n":99,"o":{"op":"hold","prom');
    const again = createFileQueueStore({ dir, logger });
    const st = await again.load();
    expect(st.held.map((p) => p.id)).toEqual(['b']);
    expect(st.usage).toEqual([{ owner: 'k1', day: '2026-01-01', prompts: 1, gpu_s: 2.5, images: 1 }]);
    expect(st.nextSeq).toBe(3);
    await again.apply({ op: 'hold', prompt: held('c', 'k1', 3) });
    await again.close();
    expect((await createFileQueueStore({ dir, logger }).load()).held.map((p) => p.id)).toEqual(['b', 'c']);
  });

  test('compaction folds the journal into the snapshot without replaying anything twice', async () => {
    const s = createFileQueueStore({ dir, logger, compactEvery: 3 });
    await s.load();
    for (let i = 0; i < 7; i++) await s.apply({ op: 'usage', owner: 'k', day: '2026-01-01', prompts: 1, gpu_s: 0, images: 0 });
    await s.close();
    expect(fs.existsSync(path.join(dir, 'queue.json'))).toBe(true);
    // a crash after the snapshot but before the journal was emptied: the old lines are numbered, so not counted again
    const snap = JSON.parse(fs.readFileSync(path.join(dir, 'queue.json'), 'utf8'));
    fs.appendFileSync(
      path.join(dir, 'queue.journal'),
      `${JSON.stringify({ n: snap.n, o: { op: 'usage', owner: 'k', day: '2026-01-01', prompts: 1, gpu_s: 0, images: 0 } })}\n`,
    );
    const st = await createFileQueueStore({ dir, logger }).load();
    expect(st.usage[0].prompts).toBe(7);
  });
});

describe('scheduler', () => {
  test('fair: round robin over users by arrival, weights give more turns, front goes first; fifo: arrival order', () => {
    const fair = createScheduler({ policy: 'fair', weights: { admin: 2 } });
    const fifo = createScheduler({ policy: 'fifo', weights: {} });
    const list = [held('a1', 'a', 1), held('a2', 'a', 2), held('a3', 'a', 3), held('b1', 'b', 4), held('b2', 'b', 5), held('c1', 'c', 6)];
    for (const p of list) {
      fair.add(p);
      fifo.add(p);
    }
    expect(fair.order().map((p) => p.id)).toEqual(['a1', 'b1', 'c1', 'a2', 'b2', 'a3']);
    expect(fifo.order().map((p) => p.id)).toEqual(['a1', 'a2', 'a3', 'b1', 'b2', 'c1']);
    fair.add(held('z', 'adm', 7, { front: true, role: 'admin' }));
    expect(fair.peek()!.id).toBe('z');
    fair.remove('z');
    const w = createScheduler({ policy: 'fair', weights: { admin: 2 } });
    for (let i = 0; i < 4; i++) w.add(held(`x${i}`, 'adm', i, { role: 'admin' }));
    for (let i = 0; i < 4; i++) w.add(held(`u${i}`, 'usr', 10 + i));
    expect(w.order().map((p) => p.id)).toEqual(['x0', 'u0', 'x1', 'x2', 'u1', 'x3', 'u2', 'u3']);
    fair.reorder(['a3']);
    expect(fair.order()[0].id).toBe('a3');
  });

  test("another replica's scheduler given the fair state goes on with the round robin (a fresh one would not)", () => {
    const list = () => ['a', 'b', 'c'].flatMap((u, n) => [0, 1, 2].map((i) => held(`${u}${i}`, u, n * 3 + i)));
    const saved: string[] = [];
    const first = createScheduler({ policy: 'fair', weights: {}, onServed: () => saved.push(JSON.stringify(first.fair())) });
    for (const p of list()) first.add(p);
    // four leave (a0 b0 c0 a1), each release noted for the next releaser
    for (let i = 0; i < 4; i++) {
      const p = first.peek()!;
      first.remove(p.id);
      first.served(p.owner, p.role);
    }
    expect(saved).toHaveLength(4);
    const rest = () => list().filter((p) => !['a0', 'b0', 'c0', 'a1'].includes(p.id));
    const next = createScheduler({ policy: 'fair', weights: {} });
    const fresh = createScheduler({ policy: 'fair', weights: {} });
    for (const p of rest()) {
      next.add(p);
      fresh.add(p);
    }
    next.restoreFair(JSON.parse(saved[3]));
    expect(next.order().map((p) => p.id)).toEqual(first.order().map((p) => p.id));
    expect(next.order().map((p) => p.id)).toEqual(['b1', 'c1', 'a2', 'b2', 'c2']);
    // a round robin started afresh gives alice a second turn in a row
    expect(fresh.order()[0].id).toBe('a2');
    // only what matters is kept: users whose next turn is later than now (alice's; bob and carol are due)
    expect(JSON.parse(saved[3])).toEqual({ now: 1, pass: { a: 2 } });
    // and a release the next releaser takes back (an earlier turn arrived) gives the same order again, not the
    // passes this replica noted before it was handed the state
    const b1 = next.peek()!;
    next.remove(b1.id);
    const turn = next.served(b1.owner, b1.role);
    expect(next.overtaken(b1, turn)).toBe(false);
    next.giveBack(b1, turn);
    expect(next.order().map((p) => p.id)).toEqual(['b1', 'c1', 'a2', 'b2', 'c2']);
  });
});

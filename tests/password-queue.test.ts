/**
 * bcrypt work is queued to one job per spare core (auth/passwords.ts): a burst of logins must leave the event loop
 * a core. Observed on the real native bcrypt, wrapped only to count how many of its calls run at once.
 */
import fs from 'node:fs';
import bcrypt from 'bcrypt';
import { createBcryptThreads, HASHING_NICE } from '../gateway/auth/bcryptThreads';
import { createPasswords } from '../gateway/auth/passwords';

test('parallel hashes and checks run one at a time with parallel=1, and every answer is still right', async () => {
  let running = 0;
  let most = 0;
  const count =
    <A extends unknown[], R>(fn: (...a: A) => Promise<R>) =>
    async (...a: A): Promise<R> => {
      running++;
      most = Math.max(most, running);
      try {
        return await fn(...a);
      } finally {
        running--;
      }
    };
  const realHash = bcrypt.hash.bind(bcrypt) as (p: string, c: number) => Promise<string>;
  const realCompare = bcrypt.compare.bind(bcrypt) as (p: string, h: string) => Promise<boolean>;
  const h = jest.spyOn(bcrypt, 'hash').mockImplementation(count(realHash) as never);
  const c = jest.spyOn(bcrypt, 'compare').mockImplementation(count(realCompare) as never);
  try {
    const pw = createPasswords(4, { parallel: 1, engine: bcrypt });
    const hashes = await Promise.all(['a-password-1', 'b-password-2', 'c-password-3'].map((p) => pw.hash(p)));
    const checks = await Promise.all([
      pw.verify('a-password-1', hashes[0]),
      pw.verify('wrong', hashes[0]),
      pw.verify('b-password-2', hashes[1]),
      pw.verify('c-password-3', hashes[2]),
      pw.verify('c-password-3', null),
      pw.verify('b-password-2', hashes[2]),
    ]);
    expect(checks).toEqual([true, false, true, true, false, false]);
    expect(c.mock.calls.length).toBeGreaterThanOrEqual(6);
    expect(h.mock.calls.length).toBeGreaterThanOrEqual(4); // three, plus the dummy made up front
    expect(most).toBe(1);
  } finally {
    h.mockRestore();
    c.mockRestore();
  }
});

test('with parallel=2 logins get one thread and the other stays free for signed-in work', async () => {
  // bcrypt's compare held at a gate, so what runs at once is seen exactly; hashing is the real one
  const held: { who: string; release: () => void }[] = [];
  const engine = {
    hash: (p: string, cost: number) => bcrypt.hash(p, cost),
    compare: (p: string, hash: string) =>
      new Promise<boolean>((resolve) => held.push({ who: p, release: () => void bcrypt.compare(p, hash).then(resolve) })),
  };
  // the lanes hand work on through promises only: once the microtasks have run, whatever can start has started
  const settle = () => new Promise((r) => setImmediate(r));
  const pw = createPasswords(4, { parallel: 2, engine });
  const hash = await pw.hash('a-password-1');
  const logins = Array.from({ length: 4 }, (_, i) => pw.verify(i % 2 ? 'a-password-1' : 'nope', hash));
  await settle();
  expect(held.map((h) => h.who)).toEqual(['nope']); // one login at a time
  const change = pw.verify('a-password-1', hash, 'signed-in');
  const newHash = pw.hash('b-password-2'); // waits behind the signed-in check, not behind the logins
  await settle();
  expect(held.map((h) => h.who)).toEqual(['nope', 'a-password-1']);
  held.splice(1, 1)[0].release();
  expect(await change).toBe(true);
  const h2 = await newHash; // hashed while the first login still holds its thread
  expect(held.map((h) => h.who)).toEqual(['nope']);
  // drain everything in order; the answers are still right
  const drain = setInterval(() => held.shift()?.release(), 5);
  try {
    expect(await Promise.all(logins)).toEqual([false, true, false, true]);
    expect(await pw.verify('b-password-2', h2, 'signed-in')).toBe(true);
  } finally {
    clearInterval(drain);
    await pw.close();
  }
});

/** Niceness of every thread of this process (field 19 of /proc/self/task/TID/stat), Linux only. */
function threadNices(): number[] {
  return fs.readdirSync('/proc/self/task').map((tid) => {
    const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
  });
}

const linux = process.platform === 'linux' ? test : test.skip;

linux('by default the hashing runs on threads of lowered priority, so a login storm leaves the event loop the CPU', async () => {
  const before = threadNices().filter((n) => n === HASHING_NICE).length;
  const pw = createPasswords(4, { parallel: 2 });
  try {
    const hash = await pw.hash('a-password-1');
    const during = pw.verify('a-password-1', hash);
    // the hashing threads exist while there is work; each has lowered its own priority
    expect(threadNices().filter((n) => n === HASHING_NICE).length).toBeGreaterThan(before);
    expect(await during).toBe(true);
    expect(await Promise.all([pw.verify('nope', hash), pw.verify('a-password-1', null), pw.verify('a-password-1', hash)])).toEqual([
      false,
      false,
      true,
    ]);
  } finally {
    await pw.close();
  }
});

test('a hashing thread passes bcrypt errors back and keeps working', async () => {
  const engine = createBcryptThreads({ threads: 1 });
  try {
    await expect(engine.hash('x', 99)).rejects.toThrow(/bcrypt: Invalid salt/);
    expect(await engine.compare('x', 'not-a-bcrypt-hash')).toBe(false);
    const h = await engine.hash('a-password-1', 4);
    expect(await engine.compare('a-password-1', h)).toBe(true);
  } finally {
    await engine.close();
  }
});

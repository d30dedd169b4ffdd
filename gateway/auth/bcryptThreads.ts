import { Worker } from 'node:worker_threads';

/** The two bcrypt calls the password service makes (the `bcrypt` module itself has this shape too). */
export interface BcryptEngine {
  hash(password: string, cost: number): Promise<string>;
  compare(password: string, hash: string): Promise<boolean>;
}

/** The niceness of the hashing threads: well below the event loop, yet never starved on a busy machine. */
export const HASHING_NICE = 10;

/**
 * Runs inside each hashing thread. It lowers its own scheduling priority (Linux: setpriority on the thread's id, from
 * /proc/thread-self) and hashes synchronously, so a login storm's bcrypt work yields the CPU to the event loop:
 * on the shared libuv pool the hashes ran at the event loop's priority and, on two cores, delayed it by 50–200 ms.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const os = require('node:os');
try {
  const tid = Number(fs.readlinkSync('/proc/thread-self').split('/').pop());
  if (tid > 0) os.setPriority(tid, workerData.nice);
} catch {}
const bcrypt = require(workerData.bcrypt);
parentPort.on('message', (job) => {
  try {
    const value = job.op === 'hash' ? bcrypt.hashSync(job.password, job.arg) : bcrypt.compareSync(job.password, job.arg);
    parentPort.postMessage({ value });
  } catch (e) {
    parentPort.postMessage({ error: String((e && e.message) || e) });
  }
});`;

interface Slot {
  worker: Worker;
  busy: boolean;
  settle?: (m: { value?: unknown; error?: string }) => void;
}

/**
 * A bcrypt engine on `threads` worker threads of low priority, started on first use and ended after `idleMs`
 * without work (an idle gateway keeps no hashing threads). A thread holds the process open only while it hashes.
 * The caller bounds the jobs in flight to `threads` (auth/passwords.ts's lane); extra jobs wait here in order.
 */
export function createBcryptThreads(opts: { threads: number; idleMs?: number; nice?: number }): BcryptEngine & { close(): Promise<void> } {
  const slots: Slot[] = [];
  const waiting: ((s: Slot) => void)[] = [];
  const idleMs = opts.idleMs ?? 30_000;
  let idleTimer: NodeJS.Timeout | null = null;
  let closed = false;

  function spawn(): Slot {
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { bcrypt: require.resolve('bcrypt'), nice: opts.nice ?? HASHING_NICE },
    });
    const slot: Slot = { worker, busy: false };
    worker.unref();
    worker.on('message', (m) => slot.settle?.(m));
    // A thread that fails or is ended leaves the pool; a job it held is answered with the error.
    const gone = (why: string) => {
      if (slots.includes(slot)) slots.splice(slots.indexOf(slot), 1);
      slot.settle?.({ error: why });
    };
    worker.on('error', (err) => gone(err.message));
    worker.on('exit', (code) => gone(`hashing thread exited (${code})`));
    slots.push(slot);
    return slot;
  }

  function release(slot: Slot): void {
    slot.busy = false;
    slot.settle = undefined;
    slot.worker.unref();
    const next = waiting.shift();
    if (next) return next(slot);
    if (slots.every((s) => !s.busy)) {
      if (idleTimer) clearTimeout(idleTimer);
      idleTimer = setTimeout(() => void endIdle(), idleMs);
      idleTimer.unref();
    }
  }

  async function acquire(): Promise<Slot> {
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = null;
    const free = slots.find((s) => !s.busy) ?? (slots.length < opts.threads ? spawn() : null);
    const slot = free ?? (await new Promise<Slot>((r) => waiting.push(r)));
    slot.busy = true;
    slot.worker.ref();
    return slot;
  }

  async function run<T>(op: 'hash' | 'compare', password: string, arg: string | number): Promise<T> {
    const slot = await acquire();
    try {
      const m = await new Promise<{ value?: unknown; error?: string }>((resolve) => {
        slot.settle = resolve;
        slot.worker.postMessage({ op, password, arg });
      });
      if (m.error !== undefined) throw new Error(`bcrypt: ${m.error}`);
      return m.value as T;
    } finally {
      if (slots.includes(slot)) release(slot);
      else if (!closed) waiting.shift()?.(spawn()); // the thread died: a waiting job gets a new one
    }
  }

  async function endIdle(): Promise<void> {
    const idle = slots.filter((s) => !s.busy);
    for (const s of idle) slots.splice(slots.indexOf(s), 1);
    await Promise.all(idle.map((s) => s.worker.terminate()));
  }

  async function close(): Promise<void> {
    closed = true;
    if (idleTimer) clearTimeout(idleTimer);
    await Promise.all(slots.splice(0).map((s) => s.worker.terminate()));
  }

  return {
    hash: (password, cost) => run<string>('hash', password, cost),
    compare: (password, hash) => run<boolean>('compare', password, hash),
    close,
  };
}

import crypto from 'node:crypto';
import os from 'node:os';
import { createBcryptThreads, type BcryptEngine } from './bcryptThreads';
import { PASSWORD_MAX_BYTES } from '../users/rules';

/** Password hashing and checking (native bcrypt at the configured cost). */
export interface Passwords {
  hash(password: string): Promise<string>;
  /**
   * True when `password` matches `hash`. With no usable hash (unknown user, password-less account) it still runs
   * one bcrypt comparison of the same cost against a dummy, so the answer takes the same time either way.
   */
  verify(password: string, hash: string | null | undefined): Promise<boolean>;
  /** ends the hashing threads (shutdown) */
  close(): Promise<void>;
}

const looksLikeBcrypt = (h: string | null | undefined): h is string => !!h && /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/.test(h);

/**
 * bcrypt hashes that may run at once. They run on threads of their own (auth/bcryptThreads.ts), sized as if they
 * shared libuv's pool with file I/O, DNS and zlib (as `engine: bcrypt` does): two of its threads are left free; and
 * each hash keeps a core busy for a quarter of a second, so the lane is one job per core (at least two, so that a
 * revocation's hash is never stuck behind a single long login), and never the whole pool.
 */
export function hashingThreads(env: NodeJS.ProcessEnv = process.env, cores = os.availableParallelism()): number {
  const pool = Number(env.UV_THREADPOOL_SIZE) || 4;
  return Math.min(Math.max(2, cores), Math.max(1, pool - 2));
}

/**
 * Builds the password service; the dummy hash is made once, up front, at the same cost as real ones. The hashing
 * runs on low-priority threads of its own (auth/bcryptThreads.ts) unless `engine` is given (`bcrypt` itself: the
 * shared libuv pool at normal priority).
 */
export function createPasswords(cost: number, opts: { parallel?: number; engine?: BcryptEngine } = {}): Passwords {
  const parallel = opts.parallel ?? hashingThreads();
  const lane = createLane(parallel);
  const threads = opts.engine ? null : createBcryptThreads({ threads: parallel });
  const engine: BcryptEngine = opts.engine ?? threads!;
  // Started now so the first unknown-user login is not the slow one.
  const dummy = lane(() => engine.hash(crypto.randomBytes(18).toString('base64'), cost));
  const dummyHash = () => dummy;
  return {
    hash: (password) => lane(() => engine.hash(password, cost)),
    async verify(password, hash) {
      // The native binding stops at NUL and bcrypt at 72 bytes: such input could match a shorter password.
      const acceptable = typeof password === 'string' && !password.includes('\0') && Buffer.byteLength(password) <= PASSWORD_MAX_BYTES;
      const target = looksLikeBcrypt(hash) ? hash : await dummyHash();
      const ok = await lane(() => engine.compare(acceptable ? password : '', target));
      return ok && acceptable && target === hash;
    },
    close: async () => {
      await dummy.catch(() => undefined);
      await threads?.close();
    },
  };
}

/** At most `n` tasks at once, the rest waiting in order (a waiting task holds no pool thread). */
function createLane(n: number): <T>(task: () => Promise<T>) => Promise<T> {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async (task) => {
    if (running >= n) await new Promise<void>((r) => waiting.push(r));
    else running++;
    try {
      return await task();
    } finally {
      const next = waiting.shift();
      if (next)
        next(); // the slot passes straight on
      else running--;
    }
  };
}

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
  verify(password: string, hash: string | null | undefined, who?: PasswordCaller): Promise<boolean>;
  /** ends the hashing threads (shutdown) */
  close(): Promise<void>;
}

/**
 * Who asks for a password check: `anonymous` (a login, anyone on the network) or `signed-in` (a signed-in user's
 * password change). Hashing new passwords is always signed-in work (an admin, the user, or the one-time setup).
 */
export type PasswordCaller = 'anonymous' | 'signed-in';

/**
 * The hashing threads anonymous checks may use: all but one, which stays free for signed-in work — so a login storm
 * never holds up a password change or a revocation's new hash, and on two cores it leaves the event loop a core of
 * its own (with both threads hashing, its event-loop delay reached 11–35 ms; with one, 5–8 ms). One thread in all
 * (UV_THREADPOOL_SIZE=2 or 3) is shared.
 */
export function anonymousLanes(threads: number): number {
  return Math.max(1, threads - 1);
}

const looksLikeBcrypt = (h: string | null | undefined): h is string => !!h && /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/.test(h);

/**
 * bcrypt hashes that may run at once. They run on threads of their own (auth/bcryptThreads.ts), sized as if they
 * shared libuv's pool with file I/O, DNS and zlib (as `engine: bcrypt` does): two of its threads are left free; and
 * each hash keeps a core busy for a quarter of a second, so it is one thread per core (at least two: one of them is
 * kept for signed-in work, see anonymousLanes), and never the whole pool.
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
  const signedIn = createLane(1);
  const anonymous = parallel > 1 ? createLane(anonymousLanes(parallel)) : signedIn;
  const lane = (who: PasswordCaller) => (who === 'anonymous' ? anonymous : signedIn);
  const threads = opts.engine ? null : createBcryptThreads({ threads: parallel });
  const engine: BcryptEngine = opts.engine ?? threads!;
  // Started now so the first unknown-user login is not the slow one.
  const dummy = signedIn(() => engine.hash(crypto.randomBytes(18).toString('base64'), cost));
  const dummyHash = () => dummy;
  return {
    hash: (password) => signedIn(() => engine.hash(password, cost)),
    async verify(password, hash, who = 'anonymous') {
      // The native binding stops at NUL and bcrypt at 72 bytes: such input could match a shorter password.
      const acceptable = typeof password === 'string' && !password.includes('\0') && Buffer.byteLength(password) <= PASSWORD_MAX_BYTES;
      const target = looksLikeBcrypt(hash) ? hash : await dummyHash();
      const ok = await lane(who)(() => engine.compare(acceptable ? password : '', target));
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

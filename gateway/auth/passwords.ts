import crypto from 'node:crypto';
import os from 'node:os';
import bcrypt from 'bcrypt';
import { PASSWORD_MAX_BYTES } from '../users/rules';

/** Password hashing and checking (native bcrypt at the configured cost). */
export interface Passwords {
  hash(password: string): Promise<string>;
  /**
   * True when `password` matches `hash`. With no usable hash (unknown user, password-less account) it still runs
   * one bcrypt comparison of the same cost against a dummy, so the answer takes the same time either way.
   */
  verify(password: string, hash: string | null | undefined): Promise<boolean>;
}

const looksLikeBcrypt = (h: string | null | undefined): h is string => !!h && /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/.test(h);

/**
 * Runs at most `parallel` bcrypt operations at once, the rest in arrival order. Each one keeps a CPU core busy for
 * a quarter of a second; with one per core, a burst of logins leaves the event loop (every other request) without
 * a core and delays it by hundreds of milliseconds.
 */
function hashingQueue(parallel: number) {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async <T>(work: () => Promise<T>): Promise<T> => {
    if (running >= parallel) await new Promise<void>((resolve) => waiting.push(resolve));
    else running++;
    try {
      return await work();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else running--;
    }
  };
}

/** Builds the password service; the dummy hash is made once, up front, at the same cost as real ones. */
export function createPasswords(cost: number, parallel = Math.max(1, os.availableParallelism() - 1)): Passwords {
  const queued = hashingQueue(parallel);
  // Started now so the first unknown-user login is not the slow one.
  const dummy = queued(() => bcrypt.hash(crypto.randomBytes(18).toString('base64'), cost));
  const dummyHash = () => dummy;
  return {
    hash: (password) => queued(() => bcrypt.hash(password, cost)),
    async verify(password, hash) {
      // The native binding stops at NUL and bcrypt at 72 bytes: such input could match a shorter password.
      const acceptable = typeof password === 'string' && !password.includes('\0') && Buffer.byteLength(password) <= PASSWORD_MAX_BYTES;
      const target = looksLikeBcrypt(hash) ? hash : await dummyHash();
      const ok = await queued(() => bcrypt.compare(acceptable ? password : '', target));
      return ok && acceptable && target === hash;
    },
  };
}

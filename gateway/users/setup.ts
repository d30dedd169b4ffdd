import crypto from 'node:crypto';
import { safeEqual } from '../auth/apiKey';
import type { UserStore } from './types';

// No 0/O, 1/I/L: the code is read off a console and typed by hand.
const ALPHABET = 'ABCDEFGHJKMNPQRSTUVWXYZ23456789';

/** A random setup code like `K7QM-3XHT-PW9A-D2NE` (about 80 bits). */
export function generateSetupCode(): string {
  const chars = Array.from({ length: 16 }, () => ALPHABET[crypto.randomInt(ALPHABET.length)]);
  return [0, 4, 8, 12].map((i) => chars.slice(i, i + 4).join('')).join('-');
}

const normalise = (s: string) => s.replace(/[\s-]/g, '').toUpperCase();

/** First-run setup: a one-time code, valid only while no administrator exists. */
export interface Setup {
  /** true while the store has no administrator */
  pending(): boolean;
  /** constant-time check of a presented code; false once an administrator exists */
  check(code: unknown): boolean;
  /** the line to print at start-up, or null when setup is already done */
  notice(): string | null;
}

/** Creates the setup code for this run when the store has no administrator yet (nothing is persisted). */
export function createSetup(store: Pick<UserStore, 'hasAdmin'>, code: string = generateSetupCode()): Setup {
  const active = store.hasAdmin() ? null : code;
  return {
    pending: () => !store.hasAdmin(),
    check(presented) {
      if (!active || typeof presented !== 'string' || presented.length > 64) return false;
      const ok = safeEqual(normalise(presented), normalise(active));
      return ok && !store.hasAdmin();
    },
    notice() {
      if (!active || store.hasAdmin()) return null;
      return (
        `First run: no administrator exists. One-time setup code: ${active} — open /register and enter it to create ` +
        'the first admin (or register from this machine without it, or run `npm run users -- add NAME --admin`). ' +
        'The code stops working once an administrator exists.'
      );
    },
  };
}

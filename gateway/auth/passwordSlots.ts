import type { IncomingMessage } from 'node:http';
import { AppError } from '../errors';

/** Caps on password checks in flight (each is a bcrypt comparison, ~0.25 s of a pool thread at cost 12). */
export interface PasswordSlots {
  /**
   * Runs one password check for `req`'s client, or throws 429 RATE_LIMITED at once — before any hashing — when that
   * client, or everyone together, already has the most checks in flight that are allowed.
   */
  run<T>(req: IncomingMessage, check: () => Promise<T>): Promise<T>;
}

/** Default caps: a browser or script never needs more than a few at once; the total bounds the hashing queue. */
export const PASSWORD_CHECKS_PER_CLIENT = 4;
export const PASSWORD_CHECKS_TOTAL = 32;

/** Builds the caps; `clientIp` is the one client-IP function's answer for a request (net/clientIp.ts). */
export function createPasswordSlots(deps: {
  clientIp: (req: IncomingMessage) => string;
  perClient?: number;
  total?: number;
}): PasswordSlots {
  const perClient = deps.perClient ?? PASSWORD_CHECKS_PER_CLIENT;
  const total = deps.total ?? PASSWORD_CHECKS_TOTAL;
  const byClient = new Map<string, number>();
  let inFlight = 0;
  const busy = (scope: 'client' | 'gateway', limit: number) =>
    new AppError(
      429,
      'RATE_LIMITED',
      'Too many password checks in flight; try again in a moment',
      { in_flight_limit: limit, scope },
      { 'Retry-After': '1' },
    );
  return {
    async run(req, check) {
      const ip = deps.clientIp(req);
      const mine = byClient.get(ip) ?? 0;
      if (mine >= perClient) throw busy('client', perClient);
      if (inFlight >= total) throw busy('gateway', total);
      byClient.set(ip, mine + 1);
      inFlight++;
      try {
        return await check();
      } finally {
        inFlight--;
        const left = (byClient.get(ip) ?? 1) - 1;
        if (left > 0) byClient.set(ip, left);
        else byClient.delete(ip);
      }
    },
  };
}

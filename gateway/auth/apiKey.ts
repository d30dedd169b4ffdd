import crypto from 'node:crypto';

/** Constant-time string equality (hash both sides so lengths never leak through timing). */
export function safeEqual(a: string, b: string): boolean {
  const ha = crypto.createHash('sha256').update(a).digest();
  const hb = crypto.createHash('sha256').update(b).digest();
  return crypto.timingSafeEqual(ha, hb) && a.length === b.length;
}

/** safeEqual against one fixed secret, its hash taken once (the static key is compared on every request). */
export function matcherFor(expected: string): (candidate: string) => boolean {
  const he = crypto.createHash('sha256').update(expected).digest();
  return (candidate) => {
    const hc = crypto.createHash('sha256').update(candidate).digest();
    return crypto.timingSafeEqual(hc, he) && candidate.length === expected.length;
  };
}

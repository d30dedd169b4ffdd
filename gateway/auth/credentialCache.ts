import type { CredentialSource, Principal } from './principal';

/** The store's change counter: any change to users, tokens or revocations moves it (users/store.ts generation). */
export type Generation = () => number;

interface Entry {
  principal: Principal;
  gen: number;
  /** ms: the end of the cache window, or the credential's own expiry if sooner */
  until: number;
}

/**
 * Remembers verified session JWTs and personal tokens for a moment (default 2 s), so a busy client's every request
 * is not verified from scratch. Revocation still takes effect at once: an entry is only used while the user store's
 * generation is the one it was verified under, and every logout, revocation, password change, disabling or
 * deletion (here, or by another process once the store has seen the file change) moves the generation. Only
 * successes are kept; a bad credential is verified (and counted) every time.
 */
export function createCredentialCache(deps: { generation: Generation; ttlMs?: number; max?: number; now?: () => number }) {
  const ttl = deps.ttlMs ?? 2000;
  const max = deps.max ?? 10_000;
  const now = deps.now ?? Date.now;
  const entries = new Map<string, Entry>();

  function lookup(key: string): Principal | undefined {
    const e = entries.get(key);
    if (!e) return undefined;
    if (e.gen !== deps.generation() || now() >= e.until) {
      entries.delete(key);
      return undefined;
    }
    // A copy: later stages add to the principal of their request (its ComfyUI user id).
    return { ...e.principal, permissions: [...e.principal.permissions] };
  }

  function remember(key: string, gen: number, p: Principal): void {
    if (entries.size >= max) entries.clear();
    const t = now();
    const until = p.exp !== undefined ? Math.min(t + ttl, p.exp * 1000) : t + ttl;
    entries.set(key, { principal: { ...p, permissions: [...p.permissions] }, gen, until });
  }

  return {
    /** A JWT verifier that answers from the cache while it may. */
    jwt(verify: (token: string, source: CredentialSource) => Principal): (token: string, source: CredentialSource) => Principal {
      return (token, source) => {
        const key = `j${source}\u0000${token}`;
        const hit = lookup(key);
        if (hit) return hit;
        const gen = deps.generation();
        const p = verify(token, source);
        remember(key, gen, p);
        return { ...p, permissions: [...p.permissions] };
      };
    },
    /** A personal-token verifier that answers from the cache while it may. */
    token(verify: (secret: string) => Principal | null): (secret: string) => Principal | null {
      return (secret) => {
        const key = `t${secret}`;
        const hit = lookup(key);
        if (hit) return hit;
        const gen = deps.generation();
        const p = verify(secret);
        if (p) remember(key, gen, p);
        return p && { ...p, permissions: [...p.permissions] };
      };
    },
    /** Forgets everything (tests, or an invalidation event from elsewhere). */
    clear(): void {
      entries.clear();
    },
  };
}

/** The credential cache's interface. */
export type CredentialCache = ReturnType<typeof createCredentialCache>;

/**
 * "A credential was invalidated": what the user store announces and what holders of long-lived connections (the
 * WebSocket relay) act on. Kept behind this small interface so the same events can later travel between gateway
 * processes (e.g. over Redis) without the emitters or listeners changing.
 */
export type Invalidation =
  /** one session JWT (logout) */
  | { kind: 'jti'; jti: string }
  /** one personal API token (revoked one by one) */
  | { kind: 'token'; tokenId: string }
  /** every credential of an account issued before now (password change, disable, deletion) */
  | { kind: 'user'; username: string; accountId: string; reason: 'password' | 'disabled' | 'deleted' };

/** Listener for invalidations. */
export type InvalidationListener = (e: Invalidation) => void;

/** The invalidation bus. */
export interface Revocations {
  /** subscribes; returns the unsubscribe function */
  on(listener: InvalidationListener): () => void;
  emit(e: Invalidation): void;
}

/** An in-process bus: every listener hears every event, synchronously; one failing listener does not stop the rest. */
export function createRevocations(onError?: (err: unknown, e: Invalidation) => void): Revocations {
  const listeners = new Set<InvalidationListener>();
  return {
    on(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    emit(e) {
      for (const l of [...listeners]) {
        try {
          l(e);
        } catch (err) {
          onError?.(err, e);
        }
      }
    },
  };
}

/** Whether a credential described by these principal fields is void under `e`. */
export function invalidates(e: Invalidation, p: { username: string; jti?: string; tokenId?: string; source?: string }): boolean {
  if (e.kind === 'jti') return p.jti === e.jti;
  if (e.kind === 'token') return p.tokenId === e.tokenId;
  // Any credential acting as this account goes (the static key is no account: its name `api-key` is reserved).
  return p.username === e.username;
}

import type { Revocations } from '../auth/revocations';
import { errors } from '../errors';
import type { ApiTokenRecord, UserStore } from './types';
import type { UsersFile } from './usersFile';

/** How often a personal token's last_used_at is written at most (it would otherwise write the file per request). */
const TOUCH_INTERVAL_MS = 60_000;

/** What the token and revocation parts need from the store (store.ts createUserStore). */
export interface StoreInternals {
  data(): UsersFile;
  /** applies an edit now and keeps it until written (see the single writer in store.ts) */
  change(edit: (d: UsersFile) => void): void;
  /** re-reads the file if another process changed it; `force` looks again even within this event-loop turn */
  refresh(force?: boolean): void;
  reindex(): void;
  persist(): Promise<void>;
  exists(username: string): boolean;
  bySha(): Map<string, ApiTokenRecord>;
  revoked(): Map<string, number>;
  now(): number;
  bus?: Revocations;
}

/** The store's personal tokens and logged-out session ids; both announce invalidations on the bus. */
export function credentialParts(ctx: StoreInternals): Pick<UserStore, 'tokens' | 'revocations'> {
  return {
    tokens: {
      list(username) {
        ctx.refresh();
        return ctx
          .data()
          .tokens.filter((t) => t.username === username)
          .map((t) => ({ ...t }));
      },
      findBySha256(sha256) {
        ctx.refresh();
        const t = ctx.bySha().get(sha256);
        return t && { ...t };
      },
      async add(t) {
        ctx.refresh(true);
        if (!ctx.exists(t.username)) throw errors.notFound(`No user ${t.username}`);
        ctx.change((d) => {
          if (d.users.some((u) => u.username === t.username) && !d.tokens.some((x) => x.id === t.id)) d.tokens.push({ ...t });
        });
        ctx.reindex();
        await ctx.persist();
      },
      async remove(username, id) {
        ctx.refresh(true);
        if (!ctx.data().tokens.some((t) => t.id === id && t.username === username)) return false;
        ctx.change((d) => {
          d.tokens = d.tokens.filter((t) => !(t.id === id && t.username === username));
        });
        ctx.reindex();
        await ctx.persist();
        ctx.bus?.emit({ kind: 'token', tokenId: id });
        return true;
      },
      touch(id) {
        const t = ctx.data().tokens.find((x) => x.id === id);
        if (!t) return;
        const at = ctx.now();
        if (t.last_used_at && at - Date.parse(t.last_used_at) < TOUCH_INTERVAL_MS) return;
        const when = new Date(at).toISOString();
        ctx.change((d) => {
          const x = d.tokens.find((y) => y.id === id);
          if (x) x.last_used_at = when;
        });
        ctx.persist().catch(() => undefined); // logged by persist; a lost timestamp is harmless
      },
    },
    revocations: {
      async revoke(jti, exp) {
        ctx.refresh(true);
        const t = Math.floor(ctx.now() / 1000);
        ctx.change((d) => {
          d.revoked = d.revoked.filter((r) => r.exp > t);
          if (!d.revoked.some((r) => r.jti === jti)) d.revoked.push({ jti, exp });
        });
        ctx.reindex();
        await ctx.persist();
        ctx.bus?.emit({ kind: 'jti', jti });
      },
      isRevoked(jti) {
        ctx.refresh();
        return ctx.revoked().has(jti);
      },
    },
  };
}

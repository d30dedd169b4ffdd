import { errors } from '../errors';
import type { LimitSet } from './config';
import type { LimitOverride, UsageRow } from './store';

/** The UTC day of a unix ms time, YYYY-MM-DD. */
export const dayOf = (ms: number) => new Date(ms).toISOString().slice(0, 10);

/** The next UTC midnight after `ms`, as an ISO string (when per-day quotas reset). */
export const nextMidnight = (ms: number) => {
  const d = new Date(ms);
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1)).toISOString();
};

/** What a limit check needs to know about one user right now. */
export interface UserLoad {
  /** held by the gateway or waiting on a worker */
  waiting: number;
  /** prompts accepted today */
  today: number;
}

/**
 * Per-role limits from the config, per-user overrides set by admins, and per-day usage counters: the one place
 * that decides whether a user may queue another prompt (429 QUEUE_LIMIT / QUOTA_EXCEEDED otherwise).
 */
export function createLimits(deps: {
  roles: Partial<Record<'admin' | 'user', LimitSet>>;
  overrides: Record<string, LimitOverride>;
  usage: UsageRow[];
}) {
  const overrides = new Map(Object.entries(deps.overrides));
  const usage = new Map(deps.usage.map((r) => [`${r.owner}|${r.day}`, { ...r }]));

  function effective(owner: string, role: 'admin' | 'user'): LimitOverride {
    const r = deps.roles[role] ?? { max_waiting: null, max_running: null, per_day: null };
    const o = overrides.get(owner);
    return {
      max_waiting: o?.max_waiting ?? r.max_waiting,
      max_running: o?.max_running ?? r.max_running,
      per_day: o?.per_day ?? r.per_day,
    };
  }

  return {
    effective,
    /** Throws 429 when one more prompt would break a limit of `owner`. */
    check(owner: string, role: 'admin' | 'user', load: UserLoad, now = Date.now()): void {
      const l = effective(owner, role);
      if (l.per_day !== null && load.today >= l.per_day)
        throw errors.quotaExceeded(`You have queued your ${l.per_day} prompts for today`, {
          limit: 'per_day',
          value: l.per_day,
          current: load.today,
          resets_at: nextMidnight(now),
        });
      if (l.max_running === 0)
        throw errors.queueLimit('Your account may not run prompts', { limit: 'max_running', value: 0, current: 0, resets_at: null });
      if (l.max_waiting !== null && load.waiting >= l.max_waiting)
        throw errors.queueLimit(`You already have ${load.waiting} prompts waiting (at most ${l.max_waiting})`, {
          limit: 'max_waiting',
          value: l.max_waiting,
          current: load.waiting,
          // it frees up as soon as one of the caller's prompts starts or is deleted
          resets_at: null,
        });
    },
    override: (owner: string) => overrides.get(owner) ?? null,
    overrides: () => Object.fromEntries(overrides),
    setOverride(owner: string, l: LimitOverride | null) {
      if (l) overrides.set(owner, l);
      else overrides.delete(owner);
    },
    today(owner: string, now = Date.now()): number {
      return usage.get(`${owner}|${dayOf(now)}`)?.prompts ?? 0;
    },
    /** adds to the usage row of (owner, day) */
    add(owner: string, day: string, d: { prompts?: number; gpu_s?: number; images?: number }) {
      const k = `${owner}|${day}`;
      let row = usage.get(k);
      if (!row) usage.set(k, (row = { owner, day, prompts: 0, gpu_s: 0, images: 0 }));
      row.prompts += d.prompts ?? 0;
      row.gpu_s += d.gpu_s ?? 0;
      row.images += d.images ?? 0;
    },
    /** usage rows between two days (inclusive) */
    rows(from: string, to: string): UsageRow[] {
      return [...usage.values()]
        .filter((r) => r.day >= from && r.day <= to)
        .sort((a, b) => a.day.localeCompare(b.day) || a.owner.localeCompare(b.owner));
    },
  };
}

/** The limits service. */
export type Limits = ReturnType<typeof createLimits>;

import type { HeldPrompt } from './store';

/** The release order between users. */
export type Policy = 'fair' | 'fifo';

/** Where the round robin stands: the current pass, and the users whose next turn is later than it. */
export interface FairState {
  now: number;
  pass: Record<string, number>;
}

/**
 * The held prompts and the order they leave in. `fifo`: arrival order. `fair`: weighted round robin over the users
 * who have prompts waiting (stride scheduling: each user's pass grows by 1/weight per prompt released, the lowest
 * pass goes next, ties by arrival), each user's own prompts in their own order. An admin's `front` prompts go
 * before everything, in arrival order. A user who had nothing waiting joins at the current pass, so time spent
 * idle is not saved up against the others.
 */
export interface Scheduler {
  add(p: HeldPrompt): void;
  /** removes and returns the prompt; undefined when not held */
  remove(id: string): HeldPrompt | undefined;
  get(id: string): HeldPrompt | undefined;
  /** the next prompt to release among owners `may(owner)` allows, without taking it */
  peek(may?: (owner: string) => boolean): HeldPrompt | undefined;
  /** records that `owner` was given a worker (a release, or a prompt sent straight through); the turn it took */
  served(owner: string, role: HeldPrompt['role']): Turn;
  /** whether a prompt released at `turn` would not be next, were it still held (another's turn came earlier) */
  overtaken(p: HeldPrompt, turn: Turn, may?: (owner: string) => boolean): boolean;
  /** holds a released prompt again as if it had never been released (taken back from a worker's waiting slot) */
  giveBack(p: HeldPrompt, turn: Turn): void;
  /** every held prompt in the order they would leave now */
  order(): HeldPrompt[];
  /** puts the listed prompts of one queue first, in the given order (admin reorder); the rest keep theirs */
  reorder(ids: string[]): void;
  readonly size: number;
  countOf(owner: string): number;
  /** where the round robin stands (a users' pass at or below `now` is the same as none, so it is left out) */
  fair(): FairState;
  /** continues the round robin of another replica that released before this one (takeover) */
  restoreFair(s: FairState): void;
}

/** What a release changed in the order (so it can be undone when the prompt is taken back). */
export interface Turn {
  owner: string;
  role: HeldPrompt['role'];
  /** the virtual time before the release */
  prevNow: number;
}

/** Builds a scheduler with the policy and per-role weights. */
export function createScheduler(opts: {
  policy: Policy;
  weights: Partial<Record<HeldPrompt['role'], number>>;
  /** after each `served` (replicas persist the fair state for the next releaser) */
  onServed?: () => void;
}): Scheduler {
  const byOwner = new Map<string, HeldPrompt[]>();
  const front: HeldPrompt[] = [];
  const all = new Map<string, HeldPrompt>();
  // (a dry run of giveBack must not be saved for the next releaser)
  let dry = false;
  const pass = new Map<string, number>();
  let now = 0;
  // Owners whose lane joined and has not been served since: the pass they had before joining (their join pass is
  // max(that, now), so taking a release back, which lowers `now`, lowers theirs with it).
  const fresh = new Map<string, number>();
  const weight = (role: HeldPrompt['role']) => opts.weights[role] ?? 1;
  const bySeq = (a: HeldPrompt, b: HeldPrompt) => a.seq - b.seq;

  function pickFrom(lists: Map<string, HeldPrompt[]>, passes: Map<string, number>, may: (o: string) => boolean) {
    if (opts.policy === 'fifo') {
      let best: HeldPrompt | undefined;
      for (const [o, l] of lists) if (l.length && may(o) && (!best || l[0].seq < best.seq)) best = l[0];
      return best;
    }
    let best: HeldPrompt | undefined;
    let bestPass = Infinity;
    for (const [o, l] of lists) {
      if (!l.length || !may(o)) continue;
      const p = passes.get(o) ?? now;
      if (p < bestPass || (p === bestPass && best && l[0].seq < best.seq)) {
        best = l[0];
        bestPass = p;
      }
    }
    return best;
  }

  const sched: Scheduler = {
    add(p) {
      all.set(p.id, p);
      if (p.front) {
        front.push(p);
        front.sort(bySeq);
        return;
      }
      let l = byOwner.get(p.owner);
      if (!l) byOwner.set(p.owner, (l = []));
      if (!l.length) {
        fresh.set(p.owner, pass.get(p.owner) ?? 0);
        pass.set(p.owner, Math.max(pass.get(p.owner) ?? 0, now));
      }
      // in arrival order (a prompt given back after a failed release, or reordered, keeps or takes its place)
      const at = l.findIndex((x) => x.seq > p.seq);
      if (at < 0) l.push(p);
      else l.splice(at, 0, p);
    },
    remove(id) {
      const p = all.get(id);
      if (!p) return undefined;
      all.delete(id);
      const l = p.front ? front : byOwner.get(p.owner);
      const i = l?.indexOf(p) ?? -1;
      if (l && i >= 0) l.splice(i, 1);
      if (!p.front && l && !l.length) {
        byOwner.delete(p.owner);
        fresh.delete(p.owner);
      }
      return p;
    },
    get: (id) => all.get(id),
    peek(may = () => true) {
      const f = front.find((p) => may(p.owner));
      return f ?? pickFrom(byOwner, pass, may);
    },
    served(owner, role) {
      const turn = { owner, role, prevNow: now };
      const p = Math.max(pass.get(owner) ?? 0, now);
      now = p;
      pass.set(owner, p + 1 / weight(role));
      opts.onServed?.();
      fresh.delete(owner);
      return turn;
    },
    overtaken(p, turn, may = () => true) {
      // A dry run: give it back, see what would go first, and restore everything as it was.
      const saved = { pass: new Map(pass), fresh: new Map(fresh), now };
      dry = true;
      try {
        sched.giveBack(p, turn);
      } finally {
        dry = false;
      }
      const next = sched.peek((o) => o === p.owner || may(o));
      sched.remove(p.id);
      pass.clear();
      for (const [o, v] of saved.pass) pass.set(o, v);
      fresh.clear();
      for (const [o, v] of saved.fresh) fresh.set(o, v);
      now = saved.now;
      return next !== undefined && next.id !== p.id;
    },
    giveBack(p, turn) {
      const back = 1 / weight(turn.role);
      now = Math.min(now, turn.prevNow);
      // the owner's lane may have joined after this release: its pass before joining counted the release too
      if (fresh.has(turn.owner)) fresh.set(turn.owner, fresh.get(turn.owner)! - back);
      // (no pass kept: at or below `now`, as after a takeover, where only the passes ahead of it are handed over)
      else pass.set(turn.owner, (pass.get(turn.owner) ?? now) - back);
      for (const [o, before] of fresh) pass.set(o, Math.max(before, now));
      sched.add(p);
      if (!dry) opts.onServed?.();
    },
    order() {
      // A dry run of the picks on copies of the lists and passes.
      const lists = new Map([...byOwner].map(([o, l]) => [o, [...l]]));
      const passes = new Map(pass);
      const out = [...front];
      const savedNow = now;
      for (;;) {
        const p = pickFrom(lists, passes, () => true);
        if (!p) break;
        out.push(p);
        lists.get(p.owner)!.shift();
        const cur = Math.max(passes.get(p.owner) ?? 0, now);
        now = cur;
        passes.set(p.owner, cur + 1 / weight(p.role));
      }
      now = savedNow;
      return out;
    },
    reorder(ids) {
      const picked = ids.map((id) => all.get(id)).filter((p): p is HeldPrompt => !!p);
      for (const p of picked) sched.remove(p.id);
      // Reordered prompts take the arrival numbers of the earliest ones, so they lead their lane (or fifo).
      const seqs = picked.map((p) => p.seq).sort((a, b) => a - b);
      const lead = Math.min(...seqs, ...[...all.values()].map((p) => p.seq)) - picked.length;
      picked.forEach((p, i) => sched.add({ ...p, seq: lead + i }));
    },
    get size() {
      return all.size;
    },
    fair() {
      const ahead: Record<string, number> = {};
      for (const [o, p] of pass) if (p > now) ahead[o] = p;
      return { now, pass: ahead };
    },
    restoreFair(s) {
      now = s.now;
      pass.clear();
      for (const [o, p] of Object.entries(s.pass)) pass.set(o, p);
      // the join passes noted while the held prompts were read are this replica's old ones: a take-back must not
      // bring them back over the handed-over passes
      fresh.clear();
      for (const o of byOwner.keys()) fresh.set(o, pass.get(o) ?? now);
    },
    countOf(owner) {
      let c = byOwner.get(owner)?.length ?? 0;
      for (const p of front) if (p.owner === owner) c++;
      return c;
    },
  };
  return sched;
}

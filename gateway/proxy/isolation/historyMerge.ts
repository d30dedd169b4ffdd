import type { WorkerAnswer } from './workerReads';
import { isObj } from './http';
import { scanObject } from './jsonScan';

/** One history entry of one worker, with when it ended (ComfyUI adds an entry to its history when a prompt ends). */
export interface MergedEntry {
  key: string;
  entry: unknown;
  endedAt: number;
}

/** The latest timestamp among an entry's status messages (0 when it has none). */
function endedAt(entry: unknown): number {
  const msgs = isObj(entry) && isObj(entry.status) && Array.isArray(entry.status.messages) ? entry.status.messages : [];
  let t = 0;
  for (const m of msgs) if (Array.isArray(m) && isObj(m[1]) && typeof m[1].timestamp === 'number') t = Math.max(t, m[1].timestamp);
  return t;
}

/**
 * Several workers' /history answers as one list in ComfyUI's order (oldest first, the order they ended), keeping
 * only the keys `keep` accepts; only those entries are parsed. Answers that are not a history object are skipped.
 */
export function mergeHistories(answers: WorkerAnswer[], keep: (upstreamKey: string) => boolean): MergedEntry[] {
  const lists = answers.map((a) => {
    if (a.res.status !== 200) return [];
    const mine: MergedEntry[] = [];
    for (const m of scanObject(a.res.body) ?? []) {
      if (!keep(m.key)) continue;
      const entry = JSON.parse(a.res.body.toString('utf8', m.start, m.end)) as unknown;
      mine.push({ key: m.key, entry, endedAt: endedAt(entry) });
    }
    return mine;
  });
  // A merge: within one worker its own order stands; between workers, the one whose next entry ended first.
  const at = lists.map(() => 0);
  const out: MergedEntry[] = [];
  for (;;) {
    let best = -1;
    lists.forEach((l, w) => {
      if (at[w] < l.length && (best < 0 || l[at[w]].endedAt < lists[best][at[best]].endedAt)) best = w;
    });
    if (best < 0) return out;
    out.push(lists[best][at[best]++]);
  }
}

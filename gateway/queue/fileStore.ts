import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log';
import { sweepStaleTemps, writeFileAtomic } from '../users/atomicFile';
import { applyOp, emptyState, type QueueOp, type QueueState, type QueueStore } from './store';

/** Journal lines between snapshots. */
const COMPACT_EVERY = 2000;

interface Pending {
  line: string;
  resolve: () => void;
  reject: (e: Error) => void;
}

/**
 * The embedded QueueStore: an append-only journal (one JSON line per operation, fsync'd before `apply` resolves)
 * and a snapshot the journal is folded into now and then. Operations arriving while a write is on disk are
 * committed together by the next write (one fsync for many prompts). Every line carries a number and the snapshot
 * the last number it holds, so a crash between writing a snapshot and emptying the journal replays nothing twice.
 */
export function createFileQueueStore(deps: { dir: string; logger: Logger; compactEvery?: number }): QueueStore {
  const snapFile = path.join(deps.dir, 'queue.json');
  const journalFile = path.join(deps.dir, 'queue.journal');
  const compactEvery = deps.compactEvery ?? COMPACT_EVERY;
  let state: QueueState = emptyState();
  let n = 0;
  let sinceSnapshot = 0;
  let fh: fs.promises.FileHandle | null = null;
  let pending: Pending[] = [];
  let writing: Promise<void> | null = null;

  async function flushLoop(): Promise<void> {
    while (pending.length) {
      const batch = pending;
      pending = [];
      try {
        fh ??= await fs.promises.open(journalFile, 'a', 0o600);
        await fh.write(batch.map((p) => p.line).join(''));
        await fh.datasync();
        for (const p of batch) p.resolve();
      } catch (e) {
        for (const p of batch) p.reject(e as Error);
      }
      if (sinceSnapshot >= compactEvery) await compact();
    }
    writing = null;
  }

  async function compact(): Promise<void> {
    try {
      await writeFileAtomic(snapFile, JSON.stringify({ version: 1, n, state }));
      await fh?.close();
      fh = null;
      await fs.promises.truncate(journalFile, 0);
      sinceSnapshot = 0;
    } catch (e) {
      deps.logger.error({ err: (e as Error).message }, 'queue snapshot failed; the journal keeps everything');
    }
  }

  return {
    async load() {
      fs.mkdirSync(deps.dir, { recursive: true });
      sweepStaleTemps(snapFile);
      let upTo = 0;
      try {
        const snap = JSON.parse(fs.readFileSync(snapFile, 'utf8')) as { version?: number; n?: number; state?: QueueState };
        if (snap.version !== 1 || !snap.state) throw new Error('unknown queue snapshot format');
        state = { ...emptyState(), ...snap.state };
        upTo = n = Number(snap.n) || 0;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
          const aside = `${snapFile}.corrupt-${Date.now()}`;
          fs.renameSync(snapFile, aside);
          deps.logger.error({ err: (e as Error).message, movedTo: aside }, 'queue snapshot unreadable; replaying the journal alone');
        }
      }
      let text = '';
      try {
        text = fs.readFileSync(journalFile, 'utf8');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      for (const line of text.split('\n')) {
        if (!line.trim()) continue;
        let rec: { n?: number; o?: QueueOp };
        try {
          rec = JSON.parse(line) as { n?: number; o?: QueueOp };
        } catch {
          // a line torn by a crash mid-write was never acknowledged: nothing was promised for it
          deps.logger.warn('queue journal: skipped an incomplete line');
          continue;
        }
        if (!rec.o || typeof rec.n !== 'number' || rec.n <= upTo) continue;
        applyOp(state, rec.o);
        n = Math.max(n, rec.n);
        sinceSnapshot++;
      }
      // A journal ending in a torn line would glue the next append onto it: start a clean file from the state.
      if (text && !text.endsWith('\n')) await compact();
      return structuredClone(state);
    },
    apply(o) {
      applyOp(state, o);
      sinceSnapshot++;
      const line = `${JSON.stringify({ n: ++n, o })}\n`;
      return new Promise<void>((resolve, reject) => {
        pending.push({ line, resolve, reject });
        writing ??= flushLoop();
      });
    },
    async close() {
      while (writing) await writing;
      await fh?.close();
      fh = null;
    },
  };
}

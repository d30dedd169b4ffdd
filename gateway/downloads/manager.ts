import fs from 'node:fs';
import path from 'node:path';
import type { Audit } from '../audit';
import type { Logger } from '../log';
import { DownloadFailure, type LastError } from './errors';
import type { SafeHttp } from './safeHttp';
import { runDownload, TMP_PATTERN } from './worker';

/** One scheduled download, queued or running. */
export interface Session {
  modelId: string;
  url: string;
  dest: string;
  sha256: string | null;
  /** identity for cancellation: a newer session for the same model has a larger epoch */
  epoch: number;
  /** who started it (their HF token is used; audited) */
  user: string;
  ip: string;
  state: 'queued' | 'running';
  bytes: number;
  total: number | null;
  abort: AbortController;
  startedAt: number;
}

/** What the route layer hands over for each accepted model. */
export interface NewSession {
  modelId: string;
  url: string;
  dest: string;
  sha256: string | null;
  sizeHint: number | null;
}

/** The registry of in-flight downloads and the queue that runs at most `max_concurrent` of them. */
export interface DownloadManager {
  get(modelId: string): Session | undefined;
  /** every session of this process, queued or running */
  active(): Session[];
  lastError(modelId: string): LastError | undefined;
  /** registers every session or none (409 race handling is the caller's: it gets the conflicting id) */
  schedule(list: NewSession[], who: { user: string; ip: string }): string | null;
  cancel(modelId: string, who: { user: string; ip: string }): boolean;
  /** bytes still to come for active sessions whose destination is on the device of `dir` */
  pendingBytesOn(dev: number): Promise<number>;
  /**
   * removes our orphaned `.tmp` files from the given directories (never an active session's, nor one whose epoch
   * `running` — asked once the directories are listed — names: another replica's download in progress)
   */
  sweep(dirs: Iterable<string>, running?: () => Promise<(epoch: number) => boolean>): Promise<number>;
  close(): Promise<void>;
}

/** Builds the manager. */
export function createDownloadManager(deps: {
  http: SafeHttp;
  maxConcurrent: number;
  logger: Logger;
  audit: Audit;
  freeSpace(dir: string): Promise<number>;
  /** the HF token of the user who started a download, fetched when it starts running */
  hfToken(user: string): Promise<string | null>;
  /** several replicas: takes the model for this replica before it starts (false: another replica downloads it) */
  claim?: (s: Session) => Promise<boolean>;
}): DownloadManager {
  const sessions = new Map<string, Session>();
  const errors = new Map<string, LastError>();
  const queue: Session[] = [];
  const running = new Set<Promise<void>>();
  let active = 0;
  // Epochs start from the clock so temp names never repeat across restarts either.
  let epochCounter = Date.now();
  /** every temp file of this process has a larger epoch: the sweep never takes one, whatever path it is seen through */
  const bootEpoch = epochCounter;

  const isLive = (s: Session) => sessions.get(s.modelId) === s;

  function pump(): void {
    while (active < deps.maxConcurrent && queue.length) {
      const s = queue.shift()!;
      if (!isLive(s)) continue;
      active++;
      const p = run(s).finally(() => {
        active--;
        running.delete(p);
        pump();
      });
      running.add(p);
    }
  }

  async function run(s: Session): Promise<void> {
    if (deps.claim && !(await deps.claim(s).catch(() => false))) {
      // Another replica has it (its progress is what everyone sees): ours goes without a byte fetched.
      if (isLive(s)) sessions.delete(s.modelId);
      return;
    }
    s.state = 'running';
    const t0 = Date.now();
    try {
      const hfToken = await deps.hfToken(s.user);
      const bytes = await runDownload(deps.http, {
        url: s.url,
        dest: s.dest,
        epoch: s.epoch,
        sha256: s.sha256,
        hfToken,
        signal: s.abort.signal,
        progress: (b, t) => {
          s.bytes = b;
          s.total = t;
        },
        freeSpace: deps.freeSpace,
        isActive: () => isLive(s),
      });
      if (!isLive(s)) return;
      sessions.delete(s.modelId);
      deps.audit.record({ event: 'model_download_finish', user: s.user, ip: s.ip, model_id: s.modelId, bytes, ms: Date.now() - t0 });
    } catch (e) {
      if (s.abort.signal.aborted || !isLive(s)) return; // cancelled: audited by cancel()
      sessions.delete(s.modelId);
      const f = e instanceof DownloadFailure ? e : new DownloadFailure('DOWNLOAD_FAILED', 'internal error');
      if (!(e instanceof DownloadFailure)) deps.logger.error({ err: e, model_id: s.modelId }, 'model download crashed');
      errors.set(s.modelId, { code: f.code, message: f.message });
      deps.audit.record({ event: 'model_download_failed', user: s.user, ip: s.ip, model_id: s.modelId, code: f.code, reason: f.message });
    }
  }

  return {
    get: (id) => sessions.get(id),
    active: () => [...sessions.values()],
    lastError: (id) => errors.get(id),
    schedule(list, who) {
      for (const n of list) if (sessions.has(n.modelId)) return n.modelId;
      for (const n of list) {
        const s: Session = {
          modelId: n.modelId,
          url: n.url,
          dest: n.dest,
          sha256: n.sha256,
          epoch: ++epochCounter,
          user: who.user,
          ip: who.ip,
          state: 'queued',
          bytes: 0,
          total: n.sizeHint,
          abort: new AbortController(),
          startedAt: Date.now(),
        };
        sessions.set(n.modelId, s);
        errors.delete(n.modelId);
        queue.push(s);
        deps.audit.record({ event: 'model_download_start', user: who.user, ip: who.ip, model_id: n.modelId, url: safeUrl(n.url) });
      }
      pump();
      return null;
    },
    cancel(id, who) {
      const s = sessions.get(id);
      if (!s) return false;
      sessions.delete(id);
      s.abort.abort();
      deps.audit.record({ event: 'model_download_cancel', user: who.user, ip: who.ip, model_id: id, started_by: s.user, bytes: s.bytes });
      return true;
    },
    async pendingBytesOn(dev) {
      let sum = 0;
      for (const s of sessions.values()) {
        if (s.total === null) continue;
        const d = await fs.promises.stat(path.dirname(s.dest)).then(
          (st) => st.dev,
          () => -1,
        );
        if (d === dev) sum += Math.max(0, s.total - s.bytes);
      }
      return sum;
    },
    async sweep(dirs, running) {
      const found: { p: string; epoch: number }[] = [];
      for (const dir of new Set(dirs)) {
        let names: string[] = [];
        try {
          names = await fs.promises.readdir(dir);
        } catch {
          continue;
        }
        for (const name of names) {
          // Only earlier runs' files: a running session's file may sit in a directory also reached through a symlink or
          // another configured path, or be created while this sweep runs, so path comparisons cannot protect it.
          const m = TMP_PATTERN.exec(name);
          if (m && Number(m[1]) <= bootEpoch) found.push({ p: path.join(dir, name), epoch: Number(m[1]) });
        }
      }
      // Asked after listing: a download claimed before its file was created is known for every file seen.
      const inUse = found.length && running ? await running() : () => false;
      let removed = 0;
      for (const { p, epoch } of found) {
        if (inUse(epoch)) continue;
        try {
          if (!(await fs.promises.lstat(p)).isFile()) continue;
          await fs.promises.unlink(p);
          removed++;
          deps.logger.info({ file: p }, 'removed orphaned partial download');
        } catch {
          /* gone already */
        }
      }
      return removed;
    },
    async close() {
      queue.length = 0;
      for (const s of sessions.values()) s.abort.abort();
      sessions.clear();
      await Promise.allSettled([...running]);
    },
  };
}

/** A URL fit for the audit trail: no query (CDN signatures, tokens) and no userinfo. */
export function safeUrl(raw: string): string {
  try {
    const u = new URL(raw);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '[unparsable]';
  }
}

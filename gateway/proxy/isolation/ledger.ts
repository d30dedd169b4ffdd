import fs from 'node:fs';
import type { Logger } from '../../log';
import { sweepStaleTemps, writeFileAtomic } from '../../users/atomicFile';
import type { DocCollection } from '../../store/docs';
import { NAME_KEYS, type AccountKeys } from '../../users/types';
import { fileKey, type FileRef } from './paths';
import { ledgerRecordOf } from './ledgerRow';

/** One prompt the gateway queued: whose it is and what it produced. */
export interface PromptRecord {
  id: string;
  owner: string;
  /** unix ms when the gateway queued it */
  at: number;
  /** the clientId the owner's browser or script used ('' when it sent none) */
  clientId: string;
  /** the client_id ComfyUI was given */
  upstreamClientId: string;
  files: FileRef[];
  /** the id ComfyUI gave the prompt when it ignored ours (older servers make their own); absent when equal */
  upstreamId?: string;
  /** the name of the worker that ran it (gateway/queue, several workers); absent = the first */
  worker?: string;
}

/** The persistent prompt-ownership ledger (DESIGN §7): bounded like ComfyUI's history, written atomically. */
export interface Ledger {
  add(r: Omit<PromptRecord, 'files' | 'at'> & { at?: number }): void;
  remove(id: string): void;
  get(id: string): PromptRecord | undefined;
  owner(id: string): string | undefined;
  /** records the id ComfyUI answered with for the gateway's prompt `id` (when it differs) */
  setUpstreamId(id: string, upstreamId: string): void;
  /** records which worker was given the prompt (several workers) */
  setWorker(id: string, worker: string): void;
  /** the gateway's id of a prompt ComfyUI knows as `upstreamId` (undefined when not mapped) */
  byUpstreamId(upstreamId: string): string | undefined;
  /** the user's prompt ids, oldest first */
  idsOf(owner: string): string[];
  /** remembers files a prompt produced (from history outputs and `executed` events) */
  addFiles(id: string, files: FileRef[]): void;
  /** whether one of the user's prompts produced this file */
  ownsFile(user: string, f: FileRef): boolean;
  /** the worker that produced this file, when a prompt of the ledger did and ran on a named worker */
  workerOfFile(f: FileRef): string | undefined;
  readonly size: number;
  /** writes pending changes now */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** ComfyUI's MAXIMUM_HISTORY_SIZE. */
export const LEDGER_MAX = 10_000;
const MAX_FILES_PER_PROMPT = 512;

type Row = [string, string, number, string, string, [string, string, string][], string?, string?];

/** Loads (or starts) the ledger kept in `file`; corrupt files are moved aside, never silently overwritten. */
/**
 * Owners are kept as account keys (users/types.ts AccountKeys) and shown as the current username: a prompt of a
 * deleted account has no owner any more (admins only), and a later account of the same name does not inherit it.
 */
export function createLedger(deps: {
  file: string;
  logger: Logger;
  max?: number;
  flushDelayMs?: number;
  keys?: AccountKeys;
  /** kept in PostgreSQL for several replicas (store/docs.ts) instead of `file`: what is there now, and the collection */
  shared?: { initial: Map<string, PromptRecord>; docs: DocCollection<PromptRecord> };
}): Ledger {
  const keys = deps.keys ?? NAME_KEYS;
  const max = deps.max ?? LEDGER_MAX;
  const delay = deps.flushDelayMs ?? 200;
  const byId = new Map<string, PromptRecord>();
  const byOwner = new Map<string, Set<string>>();
  const byFile = new Map<string, Set<string>>();
  const byUpstream = new Map<string, string>();
  let dirty = false;
  let timer: NodeJS.Timeout | null = null;
  let writing: Promise<void> = Promise.resolve();
  let closed = false;

  function index(r: PromptRecord) {
    let s = byOwner.get(r.owner);
    if (!s) byOwner.set(r.owner, (s = new Set()));
    s.add(r.id);
    for (const f of r.files) indexFile(r.id, f);
    if (r.upstreamId) byUpstream.set(r.upstreamId, r.id);
  }
  function indexFile(id: string, f: FileRef) {
    const k = fileKey(f);
    let s = byFile.get(k);
    if (!s) byFile.set(k, (s = new Set()));
    s.add(id);
  }
  function unindex(r: PromptRecord) {
    const s = byOwner.get(r.owner);
    s?.delete(r.id);
    if (s && !s.size) byOwner.delete(r.owner);
    if (r.upstreamId && byUpstream.get(r.upstreamId) === r.id) byUpstream.delete(r.upstreamId);
    for (const f of r.files) {
      const k = fileKey(f);
      const fs_ = byFile.get(k);
      fs_?.delete(r.id);
      if (fs_ && !fs_.size) byFile.delete(k);
    }
  }
  function insert(r: PromptRecord) {
    const old = byId.get(r.id);
    if (old) {
      unindex(old);
      byId.delete(r.id);
    }
    byId.set(r.id, r);
    index(r);
    while (byId.size > max) {
      const oldest = byId.values().next().value as PromptRecord;
      byId.delete(oldest.id);
      unindex(oldest);
      touched.add(oldest.id);
    }
  }
  /** ids changed since the last write (the shared store writes just these) */
  const touched = new Set<string>();
  const forget = (id: string) => {
    const r = byId.get(id);
    if (!r) return;
    byId.delete(id);
    unindex(r);
  };

  // Load.
  const shared = deps.shared;
  if (shared) {
    for (const r of shared.initial.values()) insert({ ...r, files: [...(r.files ?? [])] });
    touched.clear();
    // Another replica's prompt (or its files, its upstream id) becomes known here as soon as it is written there.
    shared.docs.onRemote((id, r) => (r ? insert({ ...r, files: [...(r.files ?? [])] }) : forget(id)));
    shared.docs.onReset((all) => {
      for (const id of [...byId.keys()]) if (!all.has(id) && !touched.has(id)) forget(id);
      for (const r of all.values()) if (!touched.has(r.id)) insert({ ...r, files: [...(r.files ?? [])] });
    });
  } else sweepStaleTemps(deps.file);
  if (!shared)
    try {
      const raw = fs.readFileSync(deps.file, 'utf8');
      const parsed = JSON.parse(raw) as { version?: number; prompts?: Row[] };
      if (parsed.version !== 1 || !Array.isArray(parsed.prompts)) throw new Error('unknown ledger format');
      for (const row of parsed.prompts) {
        const r = ledgerRecordOf(row);
        if (r) insert(r);
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        const aside = `${deps.file}.corrupt-${Date.now()}`;
        try {
          fs.renameSync(deps.file, aside);
        } catch {
          // nothing to move
        }
        deps.logger.error(
          { err: (e as Error).message, movedTo: aside },
          'prompt ledger unreadable; starting empty (prompts queued before are admin-only now)',
        );
      }
    }

  function snapshot(): string {
    const rows: Row[] = [];
    for (const r of byId.values()) {
      const row: Row = [r.id, r.owner, r.at, r.clientId, r.upstreamClientId, r.files.map((f) => [f.type, f.subfolder, f.filename])];
      if (r.upstreamId || r.worker) row.push(r.upstreamId ?? '');
      if (r.worker) row.push(r.worker);
      rows.push(row);
    }
    return JSON.stringify({ version: 1, prompts: rows });
  }
  function write(): Promise<void> {
    writing = writing.then(async () => {
      if (!dirty) return;
      dirty = false;
      if (shared) {
        const ids = [...touched];
        touched.clear();
        try {
          await shared.docs.write(ids.map((id) => [id, byId.get(id)]));
        } catch (e) {
          for (const id of ids) touched.add(id);
          dirty = true;
          deps.logger.error({ err: (e as Error).message }, 'prompt ledger write to the shared store failed; retrying');
          changed();
        }
        return;
      }
      try {
        await writeFileAtomic(deps.file, snapshot());
      } catch (e) {
        dirty = true;
        deps.logger.error({ err: (e as Error).message }, 'prompt ledger write failed');
      }
    });
    return writing;
  }
  function changed(id?: string) {
    if (id) touched.add(id);
    dirty = true;
    if (timer || closed) return;
    timer = setTimeout(() => {
      timer = null;
      void write();
    }, delay);
    timer.unref();
  }

  return {
    add(r) {
      insert({ ...r, owner: keys.keyOf(r.owner), at: r.at ?? Date.now(), files: [] });
      changed(r.id);
    },
    remove(id) {
      const r = byId.get(id);
      if (!r) return;
      byId.delete(id);
      unindex(r);
      changed(id);
    },
    get(id) {
      const r = byId.get(id);
      return r && { ...r, owner: keys.nameOf(r.owner) ?? '' };
    },
    owner(id) {
      const r = byId.get(id);
      return r && keys.nameOf(r.owner);
    },
    setUpstreamId(id, upstreamId) {
      const r = byId.get(id);
      if (!r || upstreamId === id || r.upstreamId === upstreamId) return;
      if (r.upstreamId && byUpstream.get(r.upstreamId) === id) byUpstream.delete(r.upstreamId);
      r.upstreamId = upstreamId;
      byUpstream.set(upstreamId, id);
      changed(id);
    },
    byUpstreamId: (upstreamId) => byUpstream.get(upstreamId),
    setWorker(id, worker) {
      const r = byId.get(id);
      if (!r || r.worker === worker) return;
      r.worker = worker;
      changed(id);
    },
    idsOf(owner) {
      return [...(byOwner.get(keys.keyOf(owner)) ?? [])];
    },
    addFiles(id, files) {
      const r = byId.get(id);
      if (!r) return;
      let added = false;
      for (const f of files) {
        if (r.files.length >= MAX_FILES_PER_PROMPT) break;
        if (r.files.some((x) => x.type === f.type && x.subfolder === f.subfolder && x.filename === f.filename)) continue;
        r.files.push(f);
        indexFile(id, f);
        added = true;
      }
      if (added) changed(id);
    },
    ownsFile(user, f) {
      const ids = byFile.get(fileKey(f));
      if (!ids) return false;
      const key = keys.keyOf(user);
      for (const id of ids) if (byId.get(id)?.owner === key) return true;
      return false;
    },
    workerOfFile(f) {
      for (const id of byFile.get(fileKey(f)) ?? []) {
        const w = byId.get(id)?.worker;
        if (w) return w;
      }
      return undefined;
    },
    get size() {
      return byId.size;
    },
    async flush() {
      if (timer) {
        clearTimeout(timer);
        timer = null;
      }
      await write();
    },
    async close() {
      closed = true;
      if (timer) {
        clearTimeout(timer);
        timer = null;
      }
      await write();
    },
  };
}

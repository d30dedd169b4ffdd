import fs from 'node:fs';
import type { IncomingMessage } from 'node:http';
import path from 'node:path';
import type { Gate } from '../app';
import type { Audit } from '../audit';
import { ConfigError } from '../config/load';
import { AppError, errors } from '../errors';
import type { Logger } from '../log';
import { writeFileAtomic } from '../users/atomicFile';
import { parseIp, parseRange, type Range } from './clientIp';

/** Which list a refusal came from. */
export type ListName = 'whitelist' | 'blacklist';

/** The entries of both lists, as written (comments dropped). */
export interface IpListsSnapshot {
  whitelist: string[];
  blacklist: string[];
}

/** One malformed entry: where it is and why. */
export interface ListProblem {
  list: ListName;
  file: string;
  line: number;
  entry: string;
  message: string;
}

interface Compiled {
  entries: string[];
  /** exact addresses, normalised, for an O(1) lookup */
  exact: Set<string>;
  /** CIDR ranges */
  ranges: Range[];
}

/** Parses a list file's text: one IPv4/IPv6 address or CIDR a line, `#` comments (whole-line or trailing), blanks. */
export function parseListText(text: string, list: ListName, file: string): { compiled: Compiled; problems: ListProblem[] } {
  const compiled: Compiled = { entries: [], exact: new Set(), ranges: [] };
  const problems: ListProblem[] = [];
  text
    .replace(/^\uFEFF/, '')
    .split(/\r?\n/)
    .forEach((raw, i) => {
      const entry = raw.split('#')[0].trim();
      if (!entry) return;
      addEntry(compiled, entry, (message) => problems.push({ list, file, line: i + 1, entry, message }));
    });
  return { compiled, problems };
}

function addEntry(c: Compiled, entry: string, onError: (message: string) => void): void {
  let range: Range;
  try {
    range = parseRange(entry);
  } catch (e) {
    return onError((e as Error).message);
  }
  if (c.entries.includes(entry)) return;
  c.entries.push(entry);
  const full = range[0].kind() === 'ipv4' ? 32 : 128;
  if (range[1] === full) c.exact.add(range[0].toString());
  else c.ranges.push(range);
}

function matches(c: Compiled, ip: string): boolean {
  const addr = parseIp(ip);
  if (!addr) return false;
  if (c.exact.has(addr.toString())) return true;
  return c.ranges.some(([net, bits]) => net.kind() === addr.kind() && addr.match(net, bits));
}

/** Which of the two lists refuses `ip` (a non-empty whitelist that does not hold it, or a blacklist that does). */
function blocking(whitelist: Compiled, blacklist: Compiled, ip: string): ListName | null {
  if (whitelist.entries.length && !matches(whitelist, ip)) return 'whitelist';
  // The blacklist applies under a whitelist too: an auto-blacklisted address stays out even if a range admits it.
  if (matches(blacklist, ip)) return 'blacklist';
  return null;
}

const describe = (p: ListProblem) => `${p.file}:${p.line}: ${p.message}`;

/** The live IP lists (DESIGN §3): loaded at start-up, reloaded from disk on change, edited atomically. */
export interface IpLists {
  /** the list that refuses this address, or null when it may knock */
  blockedBy(ip: string): ListName | null;
  /** throws 403 IP_BLOCKED (and audits, at most once a minute per address) when the address is refused */
  refuse(req: IncomingMessage, ip: string, path: string): void;
  /** front-door gate: `refuse` for the context's client IP (covers WebSocket upgrades, which have no preflight) */
  gate: Gate;
  get(): IpListsSnapshot;
  /**
   * validates and writes both files atomically (a missing key leaves that list as it is); 400 INVALID_BODY on bad
   * entries; 409 SELF_LOCKOUT when the result would refuse `keep` (the address of whoever asks for the change)
   */
  replace(next: Partial<IpListsSnapshot>, keep?: string): Promise<IpListsSnapshot>;
  /** appends an address or CIDR to blacklist.txt atomically (no-op when already covered); applies at once */
  appendToBlacklist(entry: string, comment: string): Promise<boolean>;
  /** re-reads the files now if they changed on disk */
  check(): void;
  close(): void;
}

/**
 * Loads whitelist/blacklist (throws ConfigError naming file:line for every malformed line), then follows the files:
 * fs.watch on their directories for speed and a stat poll as the fallback, so a change applies within ~1 s.
 * A malformed line at reload keeps the last good list and logs the error.
 */
export function createIpLists(deps: {
  paths: { whitelist: string; blacklist: string };
  logger: Logger;
  audit: Audit;
  pollMs?: number;
}): IpLists {
  const { logger, audit } = deps;
  const files: Record<ListName, string> = { whitelist: deps.paths.whitelist, blacklist: deps.paths.blacklist };
  const state: Record<ListName, { compiled: Compiled; sig: string }> = {
    whitelist: { compiled: { entries: [], exact: new Set(), ranges: [] }, sig: '' },
    blacklist: { compiled: { entries: [], exact: new Set(), ranges: [] }, sig: '' },
  };

  const signature = (file: string): string => {
    try {
      const st = fs.statSync(file);
      return `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    } catch {
      return 'missing';
    }
  };
  const readText = (file: string): string => {
    try {
      return fs.readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return '';
      throw e;
    }
  };

  /** Reads one list; returns its problems (state untouched when there are any). */
  function load(list: ListName): ListProblem[] {
    const file = files[list];
    const sig = signature(file);
    let text: string;
    try {
      text = readText(file);
    } catch (e) {
      return [{ list, file, line: 0, entry: '', message: `cannot read (${(e as NodeJS.ErrnoException).code ?? 'error'})` }];
    } finally {
      // Remember what we looked at even when it is bad, so one bad edit is logged once, not every poll.
      state[list].sig = sig;
    }
    const { compiled, problems } = parseListText(text, list, file);
    if (!problems.length) state[list].compiled = compiled;
    return problems;
  }

  const startup = [...load('whitelist'), ...load('blacklist')];
  if (startup.length) throw new ConfigError(startup.map(describe));

  function check(): void {
    for (const list of ['whitelist', 'blacklist'] as const) {
      if (signature(files[list]) === state[list].sig) continue;
      const before = state[list].compiled.entries.length;
      const problems = load(list);
      if (problems.length) {
        logger.error(
          { list, file: files[list], problems: problems.map(describe) },
          `${list} has malformed lines; keeping the last good list`,
        );
      } else {
        logger.info({ list, file: files[list], entries: state[list].compiled.entries.length, before }, `${list} reloaded`);
      }
    }
  }

  // Watch the directories (a file replaced by rename keeps being seen); the poll covers filesystems without events.
  const watchers: fs.FSWatcher[] = [];
  let pending: NodeJS.Timeout | null = null;
  const names = new Set(Object.values(files).map((f) => path.basename(f)));
  for (const dir of new Set(Object.values(files).map((f) => path.dirname(f)))) {
    try {
      const w = fs.watch(dir, { persistent: false }, (_event, name) => {
        if (name && !names.has(name.toString())) return;
        if (pending) return;
        pending = setTimeout(() => {
          pending = null;
          check();
        }, 25);
        pending.unref();
      });
      w.on('error', () => undefined);
      watchers.push(w);
    } catch {
      // no events here (missing dir, exotic fs): the poll below still applies changes
    }
  }
  const poll = setInterval(check, deps.pollMs ?? 1000);
  poll.unref();

  function blockedBy(ip: string): ListName | null {
    return blocking(state.whitelist.compiled, state.blacklist.compiled, ip);
  }

  // One audit line per address per minute: a blocked scanner must not flood the trail.
  const lastAudit = new Map<string, number>();
  function refuse(req: IncomingMessage, ip: string, path: string): void {
    const by = blockedBy(ip);
    if (!by) return;
    const now = Date.now();
    if ((lastAudit.get(ip) ?? 0) < now - 60_000) {
      if (lastAudit.size > 10_000) lastAudit.clear();
      lastAudit.set(ip, now);
      audit.record({ event: 'ip_blocked', ip, user_agent: req.headers['user-agent'], list: by, path: path.slice(0, 200) });
    }
    throw new AppError(403, 'IP_BLOCKED', 'Your address is not allowed to use this gateway', { ip });
  }
  const gate: Gate = (req, ctx) => refuse(req, ctx.clientIp, ctx.route.path);

  /** Keeps the leading comment block of a file, so hand-written explanations survive an edit from the admin page. */
  function headerOf(file: string, list: ListName): string {
    const lines: string[] = [];
    for (const l of readText(file)
      .replace(/^\uFEFF/, '')
      .split(/\r?\n/)) {
      if (!l.trim().startsWith('#')) break;
      lines.push(l);
    }
    if (!lines.length)
      lines.push(
        list === 'whitelist'
          ? '# One IP address or CIDR per line (IPv4 or IPv6). When any entry is present, only these may connect.'
          : '# One IP address or CIDR per line (IPv4 or IPv6). These may not connect.',
      );
    return lines.join('\n') + '\n';
  }

  let writes: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = writes.then(fn, fn);
    writes = p.catch(() => undefined);
    return p;
  };

  async function writeList(list: ListName, text: string, compiled: Compiled): Promise<void> {
    await writeFileAtomic(files[list], text, 0o644);
    state[list] = { compiled, sig: signature(files[list]) };
  }

  return {
    blockedBy,
    refuse,
    gate,
    get: () => ({ whitelist: [...state.whitelist.compiled.entries], blacklist: [...state.blacklist.compiled.entries] }),
    replace(next, keep) {
      return serial(async () => {
        const problems: Record<string, unknown>[] = [];
        const built: Partial<Record<ListName, Compiled>> = {};
        for (const list of ['whitelist', 'blacklist'] as const) {
          const entries = next[list];
          if (entries === undefined) continue;
          const c: Compiled = { entries: [], exact: new Set(), ranges: [] };
          entries.forEach((raw, index) => {
            const entry = raw.trim();
            if (!entry || entry.includes('\n') || entry.includes('#'))
              return void problems.push({ list, index, entry: raw, message: 'not an IP address or CIDR' });
            addEntry(c, entry, (message) => problems.push({ list, index, entry: raw, message }));
          });
          built[list] = c;
        }
        if (problems.length) throw errors.invalidBody('Some IP list entries are not IP addresses or CIDRs', { problems });
        // Whoever edits the lists from afar would be shut out by their own edit, with no way back but a shell.
        const by = keep ? blocking(built.whitelist ?? state.whitelist.compiled, built.blacklist ?? state.blacklist.compiled, keep) : null;
        if (by)
          throw new AppError(
            409,
            'SELF_LOCKOUT',
            `This change would make the ${by} refuse your own address (${keep}); nothing was written`,
            { ip: keep, list: by },
          );
        for (const list of ['whitelist', 'blacklist'] as const) {
          const c = built[list];
          if (!c) continue;
          await writeList(list, headerOf(files[list], list) + c.entries.map((e) => `${e}\n`).join(''), c);
        }
        return { whitelist: [...state.whitelist.compiled.entries], blacklist: [...state.blacklist.compiled.entries] };
      });
    },
    appendToBlacklist(entry, comment) {
      return serial(async () => {
        let range: Range;
        try {
          range = parseRange(entry);
        } catch {
          return false;
        }
        const [net, bits] = range;
        const full = net.kind() === 'ipv4' ? 32 : 128;
        const addr = bits === full ? net.toString() : `${net.toString()}/${bits}`;
        const bl = state.blacklist.compiled;
        const covered =
          (bits === full && bl.exact.has(addr)) || bl.ranges.some(([n, b]) => n.kind() === net.kind() && b <= bits && net.match(n, b));
        if (covered) return false;
        const current = readText(files.blacklist);
        const sep = current && !current.endsWith('\n') ? '\n' : '';
        const text = `${current}${sep}${addr} # ${comment.replace(/[\r\n]/g, ' ')}\n`;
        const parsed = parseListText(text, 'blacklist', files.blacklist);
        // A bad line someone left in the file must not cost us the address being added now.
        const compiled = parsed.problems.length ? { ...state.blacklist.compiled } : parsed.compiled;
        if (parsed.problems.length) {
          compiled.entries = [...compiled.entries];
          compiled.exact = new Set(compiled.exact);
          compiled.ranges = [...compiled.ranges];
          addEntry(compiled, addr, () => undefined);
        }
        // refused from now on, not only once the file is written (a client keeps trying meanwhile)
        state.blacklist = { compiled, sig: state.blacklist.sig };
        await writeList('blacklist', text, compiled);
        return true;
      });
    },
    check,
    close() {
      clearInterval(poll);
      if (pending) clearTimeout(pending);
      for (const w of watchers) w.close();
    },
  };
}

import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log';
import type { Upstream } from './upstream';

/** What the gateway knows about the ComfyUI it stands in front of. */
export interface ComfyServerInfo {
  /** `comfyui_version` of /system_stats (null: a server from before it was reported, e.g. mid-2024) */
  version: string | null;
  /** ComfyUI's command line from /system_stats (null when the server does not report it) */
  argv: string[] | null;
  /** /internal/folder_paths answers (newer servers) */
  internalRoutes: boolean;
  /** runs with --multi-user (from GET /users: a `users` map), null when unknown */
  multiUser: boolean | null;
  /** honours the prompt_id the gateway sends (learned from the first POST /prompt answer) */
  promptIdHonoured: boolean | null;
  /** ComfyUI's input folder when this host can read it, and where that came from */
  inputDir: string | null;
  inputDirFrom: 'config' | 'argv' | 'folder_paths' | null;
  /** the addresses ComfyUI listens on that are not loopback (reachable around the gateway) */
  exposedOn: string[];
}

/** Learns the server at start-up and whenever it becomes reachable again; logs one line each time. */
export interface ComfyServer {
  readonly info: ComfyServerInfo | null;
  /** asks ComfyUI now (at most every 2 s); resolves with what is known */
  learn(): Promise<ComfyServerInfo | null>;
  /** called by POST /prompt's first answer */
  notePromptId(honoured: boolean): void;
  /** listeners hear each fresh learn */
  onLearned(listener: (info: ComfyServerInfo) => void): void;
  close(): void;
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost|\[::1\])$/i;

/**
 * The value of `--flag X` or `--flag=X` in argv, the last one winning like argparse; `bare` when the flag stands
 * alone (argparse's nargs='?' const).
 */
function flag(argv: string[], name: string, bare: string | null = null): string | null {
  let value: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === name) value = i + 1 < argv.length && !argv[i + 1].startsWith('--') ? argv[i + 1] : bare;
    else if (argv[i].startsWith(`${name}=`)) value = argv[i].slice(name.length + 1);
  }
  return value;
}

const isDir = (p: string) => {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
};

/** Builds the discovery over the upstream client. `configuredInputDir` (comfyui.input_dir / base_dir) wins. */
export function createComfyServer(deps: {
  upstream: Upstream;
  logger: Logger;
  upstreamUrl: string;
  configuredInputDir: string | null;
  retryMs?: number;
}): ComfyServer {
  const { upstream, logger } = deps;
  let info: ComfyServerInfo | null = null;
  let inflight: Promise<ComfyServerInfo | null> | null = null;
  let lastAt = 0;
  let retry: NodeJS.Timeout | null = null;
  let closed = false;
  let honoured: boolean | null = null;
  const listeners: ((i: ComfyServerInfo) => void)[] = [];

  async function ask(): Promise<ComfyServerInfo> {
    const stats = await upstream.json<Record<string, unknown>>('GET', '/system_stats', { timeoutMs: 3000 });
    const system = isObj(stats.system) ? stats.system : {};
    const argv = Array.isArray(system.argv) ? system.argv.map(String) : null;
    const version = typeof system.comfyui_version === 'string' ? system.comfyui_version : null;
    let folders: Record<string, unknown> | null = null;
    try {
      const r = await upstream.request('GET', '/internal/folder_paths', { timeoutMs: 3000 });
      if (r.status === 200) folders = JSON.parse(r.body.toString('utf8')) as Record<string, unknown>;
    } catch {
      folders = null;
    }
    let multiUser: boolean | null = argv ? argv.includes('--multi-user') : null;
    try {
      const u = await upstream.json<Record<string, unknown>>('GET', '/users', { timeoutMs: 3000 });
      multiUser = isObj(u.users);
    } catch {
      /* keep what argv said */
    }
    let inputDir = deps.configuredInputDir;
    let inputDirFrom: ComfyServerInfo['inputDirFrom'] = inputDir ? 'config' : null;
    const fromArgv = argv ? flag(argv, '--input-directory') : null;
    if (!inputDir && fromArgv && path.isAbsolute(fromArgv) && isDir(fromArgv)) {
      inputDir = fromArgv;
      inputDirFrom = 'argv';
    }
    const base = argv ? flag(argv, '--base-directory') : null;
    if (!inputDir && base && path.isAbsolute(base) && isDir(path.join(base, 'input'))) {
      inputDir = path.join(base, 'input');
      inputDirFrom = 'argv';
    }
    if (!inputDir && folders && !fromArgv) {
      // ComfyUI keeps input/ next to models/ unless told otherwise (and then argv says so).
      const entry = folders.checkpoints;
      const first = Array.isArray(entry) ? (Array.isArray(entry[0]) ? entry[0][0] : entry[0]) : undefined;
      const candidate = typeof first === 'string' && path.isAbsolute(first) ? path.join(path.dirname(path.dirname(first)), 'input') : null;
      if (candidate && isDir(candidate)) {
        inputDir = candidate;
        inputDirFrom = 'folder_paths';
      }
    }
    const exposedOn: string[] = [];
    const listen = argv ? flag(argv, '--listen', '0.0.0.0,::') : null;
    if (listen)
      for (const a of listen
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean))
        if (!LOOPBACK.test(a)) exposedOn.push(a);
    // Whatever argv says, a gateway that reaches ComfyUI on a non-loopback address means others can too.
    const host = new URL(deps.upstreamUrl).hostname;
    if (!LOOPBACK.test(host) && !exposedOn.includes(host)) exposedOn.push(host);
    return { version, argv, internalRoutes: folders !== null, multiUser, promptIdHonoured: honoured, inputDir, inputDirFrom, exposedOn };
  }

  function describe(i: ComfyServerInfo): string {
    return [
      `ComfyUI at ${deps.upstreamUrl}: version ${i.version ?? 'unknown (older than the version report, e.g. mid-2024)'}`,
      `multi-user ${i.multiUser === null ? 'unknown' : i.multiUser ? 'on' : "OFF (the gateway keeps each user's settings and workflows apart itself)"}`,
      `/internal/folder_paths ${i.internalRoutes ? 'present' : 'absent'}`,
      `client prompt_id ${i.promptIdHonoured === null ? 'learned from the first prompt' : i.promptIdHonoured ? 'honoured' : 'ignored (ids mapped)'}`,
      `input folder ${i.inputDir ? `${i.inputDir} (from ${i.inputDirFrom})` : "unknown (users' uploads are listed from what they uploaded through the gateway)"}`,
      `command line ${i.argv ? 'reported' : 'not reported'}`,
    ].join('; ');
  }

  function scheduleRetry() {
    if (retry || closed) return;
    retry = setTimeout(() => {
      retry = null;
      void learn();
    }, deps.retryMs ?? 5000);
    retry.unref();
  }

  function learn(): Promise<ComfyServerInfo | null> {
    if (inflight) return inflight;
    if (info && Date.now() - lastAt < 2000) return Promise.resolve(info);
    inflight = ask()
      .then((i) => {
        info = i;
        lastAt = Date.now();
        logger.info(
          {
            comfyui: {
              version: i.version,
              multiUser: i.multiUser,
              internalRoutes: i.internalRoutes,
              promptIdHonoured: i.promptIdHonoured,
              inputDir: i.inputDir,
              inputDirFrom: i.inputDirFrom,
            },
          },
          describe(i),
        );
        if (i.exposedOn.length) {
          logger.warn(
            { exposedOn: i.exposedOn },
            `ComfyUI listens on ${i.exposedOn.join(', ')}: anyone who can reach that address bypasses the gateway (no login, no isolation). Start ComfyUI with --listen 127.0.0.1 (or firewall its port) so the gateway is the only door.`,
          );
        }
        for (const l of listeners) l(i);
        return i as ComfyServerInfo | null;
      })
      .catch((e) => {
        logger.debug({ err: (e as Error).message }, 'ComfyUI not reachable yet; will learn about it when it answers');
        scheduleRetry();
        return info;
      })
      .finally(() => {
        inflight = null;
      });
    return inflight;
  }

  upstream.onReachability((up) => {
    if (up) return void learn();
    lastAt = 0; // whatever answers next may be another server: ask again
    scheduleRetry();
  });

  return {
    get info() {
      return info;
    },
    learn,
    notePromptId(h) {
      if (honoured === h) return;
      honoured = h;
      if (info) info.promptIdHonoured = h;
      if (h) logger.info('ComfyUI honours the prompt_id the gateway sends');
    },
    onLearned(l) {
      listeners.push(l);
    },
    close() {
      closed = true;
      if (retry) clearTimeout(retry);
    },
  };
}

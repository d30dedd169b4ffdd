import fs from 'node:fs';
import path from 'node:path';
import type { Audit } from '../../audit';
import type { ResolvedConfig } from '../../config/load';
import { AppError } from '../../errors';
import type { Logger } from '../../log';
import type { Upstream } from '../upstream';
import { splitUserPath } from './paths';

/** What becomes of a deleted account's `input/<name>/` and `output/<name>/` folders. */
export type FilesOnDelete = 'keep' | 'delete';

/**
 * Where kept folders go, inside each area: `_deleted/<name>-<account id>/`. No username can be `_deleted` (names
 * start with a letter or digit) and every user path is put under the user's own folder, so only admins reach it.
 */
export const RETIRED_DIR = '_deleted';

/** A deleted account's folders: moved out of the way of a later account of the same name, or removed. */
export interface UserFolders {
  /** throws 409 FILES_UNREACHABLE when `mode` cannot be honoured (the gateway cannot see ComfyUI's folders) */
  check(mode: FilesOnDelete): Promise<void>;
  /** what to do with `username`'s folders when the account is next removed (default keep) */
  plan(username: string, mode: FilesOnDelete): void;
  /** called as the account is removed: moves its folders aside at once (then removes them when planned so) */
  retire(username: string, accountId: string): void;
}

/**
 * ComfyUI's input and output folders as the gateway sees them: configured (`comfyui.input_dir` / `output_dir` /
 * `base_dir`), else learned from ComfyUI's command line (`/system_stats` argv) or next to its models folder
 * (`/internal/folder_paths`) — same host only: a learned folder must exist here.
 */
export function createUserFolders(deps: {
  config: ResolvedConfig;
  upstream: Upstream;
  logger: Logger;
  audit: Audit;
  inputDir: () => string | null;
}): UserFolders {
  const { config, logger } = deps;
  const base = config.configPath ? path.dirname(config.configPath) : process.cwd();
  const configured = (dir: string | null, name: string) => {
    const d = dir ?? (config.comfyui.base_dir ? path.join(config.comfyui.base_dir, name) : null);
    return d ? path.resolve(base, d) : null;
  };
  let learned: { input: string | null; output: string | null } = { input: null, output: null };
  const planned = new Map<string, FilesOnDelete>();

  const isDir = (d: string) => !!fs.statSync(d, { throwIfNoEntry: false })?.isDirectory();
  async function learn(): Promise<void> {
    if (learned.input && learned.output) return;
    try {
      // ComfyUI's own command line names moved folders (--input-directory, --output-directory, --base-directory).
      const stats = await deps.upstream.json<{ system?: { argv?: unknown } }>('GET', '/system_stats', { timeoutMs: 2000 });
      const argv = Array.isArray(stats.system?.argv) ? stats.system.argv.filter((a): a is string => typeof a === 'string') : [];
      const flag = (name: string) => {
        for (let i = 0; i < argv.length; i++) {
          if (argv[i] === name && argv[i + 1]) return argv[i + 1];
          if (argv[i].startsWith(`${name}=`)) return argv[i].slice(name.length + 1);
        }
        return null;
      };
      const fromArgs = (name: string) => {
        const d = flag(`--${name}-directory`) ?? (flag('--base-directory') ? path.join(flag('--base-directory')!, name) : null);
        return d && path.isAbsolute(d) && isDir(d) ? d : null;
      };
      // Otherwise next to the models folder, as ComfyUI lays them out by default.
      const folders = await deps.upstream.json<Record<string, unknown>>('GET', '/internal/folder_paths', { timeoutMs: 2000 });
      const entry = folders.checkpoints;
      const first = Array.isArray(entry) ? (Array.isArray(entry[0]) ? entry[0][0] : entry[0]) : undefined;
      const root = typeof first === 'string' && path.isAbsolute(first) ? path.dirname(path.dirname(first)) : null;
      const beside = (name: string) => (root && isDir(path.join(root, name)) ? path.join(root, name) : null);
      learned = { input: fromArgs('input') ?? beside('input'), output: fromArgs('output') ?? beside('output') };
    } catch {
      /* ComfyUI elsewhere or unreachable */
    }
  }
  const areas = () => ({
    input: configured(config.comfyui.input_dir, 'input') ?? learned.input ?? deps.inputDir(),
    output: configured(config.comfyui.output_dir, 'output') ?? learned.output,
  });

  /** Moves one area's folder of the user to `_deleted/`; returns the new path, or null when there was none. */
  function moveAside(area: string, username: string, accountId: string): string | null {
    // The one path normaliser: a stored username is one plain segment, and it must stay so.
    const segs = splitUserPath(username);
    if (segs.length !== 1) throw new Error(`not a folder name: ${username}`);
    const src = path.join(area, segs[0]);
    if (!fs.lstatSync(src, { throwIfNoEntry: false })) return null;
    const graveyard = path.join(area, RETIRED_DIR);
    fs.mkdirSync(graveyard, { recursive: true });
    // Never follow a link out of the area: the graveyard must be a real folder inside it.
    if (!fs.lstatSync(graveyard).isDirectory()) throw new Error(`${graveyard} is not a plain folder`);
    const dest = path.join(graveyard, `${segs[0]}-${accountId}`);
    // rename moves a symlinked user folder as the link itself, never what it points to.
    fs.renameSync(src, dest);
    return dest;
  }

  return {
    async check(mode) {
      await learn();
      if (mode !== 'delete') return;
      const a = areas();
      if (!a.input || !a.output)
        throw new AppError(
          409,
          'FILES_UNREACHABLE',
          "The gateway cannot see ComfyUI's input and output folders, so it cannot delete the user's files; set comfyui.base_dir (or input_dir and output_dir)",
          { input: !!a.input, output: !!a.output },
        );
    },
    plan(username, mode) {
      planned.set(username, mode);
    },
    retire(username, accountId) {
      const mode = planned.get(username) ?? 'keep';
      planned.delete(username);
      const result: Record<string, string> = {};
      for (const [name, area] of Object.entries(areas())) {
        if (!area) {
          result[name] = 'unreachable';
          continue;
        }
        try {
          const moved = moveAside(area, username, accountId);
          if (!moved) result[name] = 'none';
          else if (mode === 'keep') result[name] = `kept as ${RETIRED_DIR}/${path.basename(moved)}`;
          else {
            result[name] = 'deleted';
            // Removed after the move, off the request: rm never follows symbolic links, it unlinks them.
            fs.promises
              .rm(moved, { recursive: true, force: true })
              .catch((err) => logger.error({ err: (err as Error).message, dir: moved }, "could not delete a deleted user's folder"));
          }
        } catch (err) {
          result[name] = 'failed';
          logger.error({ err: (err as Error).message, user: username, area: name }, "could not move a deleted user's folder aside");
        }
      }
      if (Object.values(result).includes('unreachable'))
        logger.warn(
          { user: username, result },
          "ComfyUI's folders are not visible to the gateway: a later user of this name would see these files; set comfyui.base_dir",
        );
      deps.audit.record({ event: 'user_files', user: null, target: username, mode, ...result });
    },
  };
}

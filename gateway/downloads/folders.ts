import fs from 'node:fs';
import path from 'node:path';
import type { ResolvedConfig } from '../config/load';
import type { Logger } from '../log';
import type { Upstream } from '../proxy/upstream';
import { hasModelExtension, MODEL_EXTENSIONS, parseModelId, type ModelId } from './modelId';

/** Folders that live among ComfyUI's folder paths but must never receive a download. */
const NEVER = new Set(['custom_nodes', 'configs', 'diffusers', 'input', 'output', 'temp', 'user', 'web', 'extensions', 'workflows']);

/** ComfyUI's standard model folders, valid under `comfyui.models_dir` even before their directory exists. */
const STANDARD = [
  'checkpoints',
  'loras',
  'vae',
  'text_encoders',
  'clip',
  'diffusion_models',
  'unet',
  'clip_vision',
  'style_models',
  'embeddings',
  'vae_approx',
  'controlnet',
  't2i_adapter',
  'gligen',
  'upscale_models',
  'latent_upscale_models',
  'hypernetworks',
  'photomaker',
  'classifiers',
  'model_patches',
  'audio_encoders',
];

/** Model folder name → its directories on this host (the first one receives downloads). */
export type FolderMap = ReadonlyMap<string, readonly string[]>;

/** Where ComfyUI keeps models: learned from `comfyui.models_dir`/`base_dir`, else the upstream's folder paths. */
export interface ModelFolders {
  /** true when the folders come from configuration (no upstream request needed to know them) */
  readonly configured: boolean;
  /** the current folder map (cached; refreshed in the background) */
  get(): Promise<FolderMap>;
  /** false while the folders could never be learned (ComfyUI unreachable and nothing configured) */
  known(): Promise<boolean>;
  /** parses a model id against the known folders; a string is the refusal reason */
  parse(id: unknown): Promise<ModelId | string>;
  /** the installed file for a model id, or null (searches every directory of the folder) */
  existing(id: ModelId): Promise<string | null>;
  /** where a download lands: the first directory of the folder */
  destination(id: ModelId): Promise<string | null>;
}

const isModelFolder = (name: string, exts: unknown): boolean => {
  if (NEVER.has(name) || name.startsWith('.') || !/^[A-Za-z0-9._-]+$/.test(name)) return false;
  // ComfyUI's `{name: [[paths], [exts]]}` form: a folder whose extensions admit no model file is not a model folder.
  if (Array.isArray(exts)) return exts.some((e) => typeof e === 'string' && MODEL_EXTENSIONS.includes(e as never));
  return true;
};

/** Parses `/internal/folder_paths`: `{name: [paths]}` (ComfyUI) or `{name: [[paths], [exts]]}`. */
export function folderMapFromUpstream(body: unknown): Map<string, string[]> {
  const out = new Map<string, string[]>();
  if (!body || typeof body !== 'object' || Array.isArray(body)) return out;
  for (const [name, value] of Object.entries(body as Record<string, unknown>)) {
    if (!Array.isArray(value)) continue;
    const nested = Array.isArray(value[0]);
    const paths = (nested ? value[0] : value) as unknown[];
    const exts = nested ? value[1] : undefined;
    if (!isModelFolder(name, exts)) continue;
    const dirs = paths.filter((p): p is string => typeof p === 'string' && path.isAbsolute(p));
    if (dirs.length) out.set(name, dirs);
  }
  return out;
}

/** Builds the folder map from a models directory: its subdirectories plus ComfyUI's standard folder names. */
export function folderMapFromDir(modelsDir: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const name of STANDARD) out.set(name, [path.join(modelsDir, name)]);
  let entries: fs.Dirent[] = [];
  try {
    entries = fs.readdirSync(modelsDir, { withFileTypes: true });
  } catch {
    entries = [];
  }
  for (const e of entries) if (e.isDirectory() && isModelFolder(e.name, undefined)) out.set(e.name, [path.join(modelsDir, e.name)]);
  return out;
}

/** Creates the folder registry. Explicit configuration wins; otherwise the upstream is asked (and re-asked on failure). */
export function createModelFolders(deps: {
  config: ResolvedConfig;
  upstream: Upstream;
  logger: Logger;
  /** called whenever a folder map has been learned from the upstream */
  onLearned?: (map: FolderMap) => void;
}): ModelFolders {
  const { config, upstream, logger } = deps;
  const base = config.configPath ? path.dirname(config.configPath) : process.cwd();
  const modelsDir = config.comfyui.models_dir
    ? path.resolve(base, config.comfyui.models_dir)
    : config.comfyui.base_dir
      ? path.resolve(base, config.comfyui.base_dir, 'models')
      : null;
  let cache: { map: Map<string, string[]>; names: Set<string>; at: number; ok: boolean } | null = null;
  let inflight: Promise<void> | null = null;

  async function load(): Promise<void> {
    let map: Map<string, string[]>;
    let ok = true;
    if (modelsDir) map = folderMapFromDir(modelsDir);
    else {
      try {
        map = folderMapFromUpstream(await upstream.json('GET', '/internal/folder_paths', { timeoutMs: 3000 }));
        deps.onLearned?.(map);
      } catch (e) {
        ok = false;
        map = cache?.map ?? new Map();
        logger.warn({ err: (e as Error).message }, 'model downloads: could not learn ComfyUI folder paths');
      }
    }
    cache = { map, names: new Set(map.keys()), at: Date.now(), ok };
  }

  async function get(): Promise<Map<string, string[]>> {
    // A learned map is kept for a minute (new folders from custom nodes appear on refresh); a failed one is retried soon.
    const ttl = cache?.ok ? 60_000 : 2_000;
    if (!cache || Date.now() - cache.at > ttl) {
      inflight ??= load().finally(() => (inflight = null));
      if (!cache) await inflight;
    }
    return cache!.map;
  }

  return {
    configured: modelsDir !== null,
    get,
    async known() {
      return (await get()).size > 0 || !!cache?.ok;
    },
    async parse(id) {
      await get();
      return parseModelId(id, cache!.names);
    },
    async existing(id) {
      const dirs = (await get()).get(id.folder) ?? [];
      for (const dir of dirs) {
        const p = path.join(dir, id.file);
        try {
          if ((await fs.promises.stat(p)).isFile()) return p;
        } catch {
          /* not here */
        }
      }
      return null;
    },
    async destination(id) {
      const dir = (await get()).get(id.folder)?.[0];
      return dir && hasModelExtension(id.file) ? path.join(dir, id.file) : null;
    },
  };
}

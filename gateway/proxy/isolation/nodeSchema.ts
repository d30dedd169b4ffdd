import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../log';
import type { Upstream } from '../upstream';
import { isObj } from './http';
import { parseAnnotated } from './paths';

/**
 * Which nodes read or write files, decided from their schema (ComfyUI's /object_info), never from their names:
 *  - a file input is one ComfyUI's frontend offers an upload or a folder for (`image_upload`, `audio_upload`,
 *    `video_upload`, `file_upload`, `animated_image_upload`, `upload`, `image_folder`), one of the file-capturing
 *    widget types (WebcamCapture's WEBCAM, Load3D's LOAD_3D…), or an option list holding files of ComfyUI's input
 *    folder (custom loaders that list `input/` without a flag) or named for a file (`latent`, `image`, …);
 *  - a node reads files when it has a file input, and writes them when it is an output node with a save prefix
 *    (`filename_prefix`, or `prefix`) or an output folder input.
 */
export interface NodeFacts {
  /** reads files named by its inputs */
  loader: boolean;
  /** saves files where its inputs say */
  saver: boolean;
  /** the inputs holding a file name (their values are confined like LoadImage's `image`) */
  fileInputs: Set<string>;
}

const UPLOAD_FLAGS = ['image_upload', 'audio_upload', 'video_upload', 'file_upload', 'animated_image_upload', 'upload', 'image_folder'];
const FILE_WIDGETS = new Set(['WEBCAM', 'LOAD_3D', 'LOAD_3D_ANIMATION']);
/** Choice inputs named for a file (LoadLatent's `latent` lists input/*.latent without a flag, even when empty). */
const FILE_CHOICES = new Set(['image', 'mask', 'file', 'audio', 'video', 'model_file', 'latent']);
const SAVE_INPUT = /^(filename_prefix|prefix|(output|save)_(path|dir|directory|folder))$/i;
/** How many options of a list are looked up in the input folder (a folder-backed list shows in its first few). */
const PROBE = 4;

/** The inputs of one node's schema, required and optional, as [name, spec] pairs. */
function inputsOf(info: Record<string, any>): [string, unknown[]][] {
  const out: [string, unknown[]][] = [];
  if (!isObj(info.input)) return out;
  for (const group of ['required', 'optional']) {
    const g = info.input[group];
    if (isObj(g)) for (const [name, spec] of Object.entries(g)) if (Array.isArray(spec)) out.push([name, spec]);
  }
  return out;
}

/** True when some of the first options name a file in ComfyUI's input folder (annotations and all). */
function listsInputFiles(options: unknown[], inputDir: string | null): boolean {
  if (!inputDir) return false;
  for (const o of options.slice(0, PROBE)) {
    if (typeof o !== 'string' || !o || o.includes('\0')) continue;
    const { name, type } = parseAnnotated(o);
    if (type && type !== 'input') continue;
    const full = path.resolve(inputDir, name);
    if (!full.startsWith(path.resolve(inputDir) + path.sep)) continue;
    try {
      if (fs.statSync(full).isFile()) return true;
    } catch {
      /* not a file there */
    }
  }
  return false;
}

/** The inputs of a node schema that hold file names. */
export function fileInputsOf(info: Record<string, any>, inputDir: string | null): Set<string> {
  const out = new Set<string>();
  for (const [name, spec] of inputsOf(info)) {
    const cfg = isObj(spec[1]) ? spec[1] : {};
    const options = Array.isArray(spec[0]) ? spec[0] : spec[0] === 'COMBO' && Array.isArray(cfg.options) ? cfg.options : null;
    if (UPLOAD_FLAGS.some((f) => cfg[f] !== undefined && cfg[f] !== false) || (typeof spec[0] === 'string' && FILE_WIDGETS.has(spec[0])))
      out.add(name);
    else if (options && (FILE_CHOICES.has(name.toLowerCase()) || listsInputFiles(options, inputDir))) out.add(name);
  }
  return out;
}

/** What a node schema says about files. */
export function nodeFacts(info: Record<string, any>, inputDir: string | null): NodeFacts {
  const fileInputs = fileInputsOf(info, inputDir);
  const saver = info.output_node === true && inputsOf(info).some(([name]) => SAVE_INPUT.test(name));
  return { loader: fileInputs.size > 0, saver, fileInputs };
}

/** Node schemas of the one upstream, fetched per class on first use and cached. */
export interface NodeSchemas {
  /** facts for each class (null: ComfyUI does not know it, or could not be asked) */
  factsFor(classes: string[]): Promise<Map<string, NodeFacts | null>>;
}

const TTL_MS = 10 * 60_000;
const MISS_TTL_MS = 30_000;
const MAX_ENTRIES = 5000;

/**
 * Caches GET /object_info/{class} answers of the upstream (custom nodes are installed while ComfyUI runs, so
 * entries expire: 10 minutes, 30 s for a class ComfyUI does not know or an upstream that failed).
 */
export function createNodeSchemas(deps: { upstream: Upstream; logger: Logger; inputDir: () => string | null }): NodeSchemas {
  const cache = new Map<string, { at: number; facts: Promise<NodeFacts | null> }>();
  const fetchFacts = async (cls: string): Promise<NodeFacts | null> => {
    try {
      const j = await deps.upstream.json<Record<string, unknown>>('GET', `/object_info/${encodeURIComponent(cls)}`, { timeoutMs: 10_000 });
      const info = isObj(j) ? j[cls] : undefined;
      return isObj(info) ? nodeFacts(info, deps.inputDir()) : null;
    } catch (e) {
      deps.logger.warn({ err: (e as Error).message, class_type: cls }, 'could not read a node schema');
      return null;
    }
  };
  return {
    async factsFor(classes) {
      const now = Date.now();
      const out = new Map<string, NodeFacts | null>();
      await Promise.all(
        [...new Set(classes)].map(async (cls) => {
          let hit = cache.get(cls);
          if (hit) {
            const facts = await hit.facts;
            if (now - hit.at > (facts ? TTL_MS : MISS_TTL_MS)) hit = undefined;
          }
          if (!hit) {
            hit = { at: now, facts: fetchFacts(cls) };
            cache.set(cls, hit);
            if (cache.size > MAX_ENTRIES) cache.delete(cache.keys().next().value as string);
          }
          out.set(cls, await hit.facts);
        }),
      );
      return out;
    },
  };
}

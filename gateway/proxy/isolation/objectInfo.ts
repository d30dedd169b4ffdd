import fs from 'node:fs';
import path from 'node:path';
import type { Interceptor } from '../../app';
import type { IsolationContext } from './context';
import { callUpstream, isObj, seesAll, sendJson, sendUpstream, unexpectedAnswer, upstreamHeaders, upstreamJson, upstreamUrl } from './http';
import { fileInputsOf } from './nodeSchema';
import { parseAnnotated } from './paths';

const EXT: Record<string, Set<string>> = {
  image: new Set(['.png', '.jpg', '.jpeg', '.webp', '.gif', '.bmp', '.tif', '.tiff', '.avif', '.jfif']),
  audio: new Set(['.wav', '.mp3', '.ogg', '.flac', '.m4a', '.aac', '.opus']),
  video: new Set(['.mp4', '.webm', '.mov', '.mkv', '.avi', '.gif', '.m4v']),
};
const MAX_FILES = 5000;

/** The media kind a loader option list holds, from its upload flag or the input's name. */
function kindOf(name: string, cfg: Record<string, unknown>): keyof typeof EXT | null {
  if (cfg.image_upload) return 'image';
  if (cfg.audio_upload) return 'audio';
  if (cfg.video_upload) return 'video';
  if (name === 'image' || name === 'mask') return 'image';
  if (name === 'audio') return 'audio';
  if (name === 'video' || name === 'file') return 'video';
  return null;
}

/** The user's own files under `<input>/<user>/`, as ComfyUI names them (`<user>/sub/x.png`). */
function ownFiles(inputDir: string, user: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, rel: string, depth: number) => {
    if (depth > 12 || out.length >= MAX_FILES) return;
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents) {
      if (e.name.startsWith('.') || out.length >= MAX_FILES) continue;
      if (e.isDirectory()) walk(path.join(dir, e.name), `${rel}/${e.name}`, depth + 1);
      else if (e.isFile()) out.push(`${rel}/${e.name}`);
    }
  };
  walk(path.join(inputDir, user), user, 0);
  return out;
}

/** GET /object_info(/{class}): loader option lists show only the caller's own input files. */
export function objectInfoInterceptor(iso: IsolationContext): Interceptor {
  const cache = new Map<string, { at: number; files: string[]; mark: string }>();
  const filesOf = (user: string): string[] => {
    const uploaded = iso.uploads.of(user);
    if (!iso.inputDir) return uploaded;
    // an upload since the folder was read shows at once (the frontend reloads the lists right after uploading)
    const mark = `${uploaded.length}:${uploaded[uploaded.length - 1] ?? ''}`;
    const hit = cache.get(user);
    if (hit && hit.mark === mark && Date.now() - hit.at < 2000) return hit.files;
    const files = ownFiles(iso.inputDir, user);
    cache.set(user, { at: Date.now(), files, mark });
    if (cache.size > 1000) cache.delete(cache.keys().next().value as string);
    return files;
  };

  function filterOptions(options: unknown[], user: string, kind: keyof typeof EXT | null): unknown[] {
    const mine = options.filter((o) => typeof o === 'string' && parseAnnotated(o).name.startsWith(`${user}/`));
    if (!kind) return mine;
    const known = new Set(mine);
    for (const f of filesOf(user)) if (EXT[kind].has(path.extname(f).toLowerCase()) && !known.has(f)) mine.push(f);
    return mine.sort();
  }

  function filterNode(info: Record<string, any>, user: string): void {
    if (!isObj(info.input)) return;
    // The node's own schema says which inputs list files (nodeSchema.ts), whatever the node is called.
    const files = fileInputsOf(info, iso.inputDir);
    for (const group of ['required', 'optional']) {
      const inputs = info.input[group];
      if (!isObj(inputs)) continue;
      for (const [name, spec] of Object.entries(inputs)) {
        if (!files.has(name) || !Array.isArray(spec)) continue;
        const cfg = isObj(spec[1]) ? spec[1] : {};
        if (Array.isArray(spec[0])) {
          inputs[name] = [filterOptions(spec[0], user, kindOf(name, cfg)), ...spec.slice(1)];
        } else if (spec[0] === 'COMBO' && Array.isArray(cfg.options)) {
          inputs[name] = [spec[0], { ...cfg, options: filterOptions(cfg.options, user, kindOf(name, cfg)) }, ...spec.slice(2)];
        }
      }
    }
  }

  return {
    id: 'isolation-object-info',
    routes: [
      { path: '/object_info', methods: ['GET', 'HEAD'] },
      { path: '/object_info/*', methods: ['GET', 'HEAD'] },
    ],
    async handle(req, res, ctx, forward) {
      const p = ctx.principal!;
      if (seesAll(p, iso.separate)) return forward();
      req.resume();
      const up = await callUpstream(iso.upstream, 'GET', upstreamUrl(ctx), upstreamHeaders(req, ctx, iso.cookieName, iso.upstream));
      const j = upstreamJson(up);
      if (!isObj(j)) {
        if (up.status === 200) throw unexpectedAnswer();
        return sendUpstream(req, res, up);
      }
      for (const info of Object.values(j)) if (isObj(info)) filterNode(info, p.username);
      sendJson(req, res, j, 200, up);
    },
  };
}

import crypto from 'node:crypto';
import type { Interceptor } from '../../app';
import type { IsolationContext } from './context';
import { callUpstream, isObj, parseJsonObject, readBody, seesAll, segs, sendUpstream, upstreamHeaders, upstreamUrl } from './http';
import { parseAnnotated, pathNotAllowed, splitUserPath, underUser, type FileType } from './paths';

/** Inputs that name where a node saves: `filename_prefix` and its relatives. */
const SAVE_PREFIX = /filename_prefix/i;
/** Inputs that name an output directory (image-saver style nodes). */
const SAVE_DIR = /^(output|save)_(path|dir|directory|folder)$/i;
/** File inputs of loader nodes (LoadImage, LoadImageMask, LoadAudio, LoadVideo, VHS_LoadVideo, Load3D, …). */
const LOADER_INPUTS = new Set(['image', 'mask', 'file', 'audio', 'video', 'model_file']);
const LOADER_CLASS = /load/i;
const URL_SCHEME = /^([a-z][a-z0-9+.-]*):\/\//i;

/**
 * Rewrites one prompt graph in place so every path-like input stays inside the user's folders (DESIGN §7).
 * Saves get `<user>/` in front; loader inputs are read from `<user>/…` of their area (input unless annotated);
 * temp files may be loaded only when one of the user's prompts produced them. Anything else is PATH_NOT_ALLOWED.
 * `confineReads: false` (admins, who may read everything) leaves loader inputs alone; saves are prefixed anyway.
 */
export function confinePromptPaths(
  prompt: unknown,
  user: string,
  ownsTemp: (subfolder: string, filename: string) => boolean,
  opts: { confineReads?: boolean } = {},
): void {
  const confineReads = opts.confineReads ?? true;
  if (!isObj(prompt)) return;
  for (const [nodeId, node] of Object.entries(prompt)) {
    if (!isObj(node) || !isObj(node.inputs)) continue;
    const cls = typeof node.class_type === 'string' ? node.class_type : '';
    for (const [name, value] of Object.entries(node.inputs)) {
      if (typeof value !== 'string') continue; // links are [node, slot]; numbers are not paths
      const where = { node: nodeId, input: name };
      if (SAVE_PREFIX.test(name)) {
        const s = splitUserPath(value, where);
        node.inputs[name] = underUser(user, s.length ? s : ['ComfyUI']).join('/');
      } else if (SAVE_DIR.test(name)) {
        node.inputs[name] = underUser(user, splitUserPath(value, where)).join('/');
      } else if (confineReads && LOADER_CLASS.test(cls) && LOADER_INPUTS.has(name.toLowerCase())) {
        node.inputs[name] = confineLoaderValue(value, user, where, ownsTemp);
      }
    }
  }
}

function confineLoaderValue(value: string, user: string, where: Record<string, unknown>, ownsTemp: (subfolder: string, filename: string) => boolean): string {
  // "No file" sentinels of optional loader inputs name nothing to read.
  if (value === '' || value.toLowerCase() === 'none') return value;
  const url = URL_SCHEME.exec(value);
  if (url) {
    // A download, not a local file: only the web schemes.
    if (/^https?$/i.test(url[1])) return value;
    throw pathNotAllowed('only http(s) URLs may be loaded', where);
  }
  const { name, type, suffix } = parseAnnotated(value);
  const s = splitUserPath(name, where);
  if (!s.length) throw pathNotAllowed('empty file name', where);
  const area: FileType = type ?? 'input';
  if (area === 'temp') {
    if (!ownsTemp(s.slice(0, -1).join('/'), s[s.length - 1])) throw pathNotAllowed('not a preview of your own prompts', where);
    return s.join('/') + suffix;
  }
  return underUser(user, s).join('/') + suffix;
}

/** POST /prompt: the gateway's prompt id, a client_id bound to the user, confined paths, then the ledger. */
export function promptInterceptor(iso: IsolationContext): Interceptor {
  return {
    id: 'isolation-prompt',
    matches: (ctx, method) => method === 'POST' && segs(ctx).join('/') === 'prompt',
    async handle(req, res, ctx) {
      const p = ctx.principal!;
      const body = parseJsonObject(await readBody(req));
      if (iso.separate) {
        confinePromptPaths(body.prompt, p.username, (subfolder, filename) => iso.ledger.ownsFile(p.username, { type: 'temp', subfolder, filename }), {
          confineReads: !seesAll(p, iso.separate),
        });
      }
      const promptId = crypto.randomUUID();
      const cid = typeof body.client_id === 'string' || typeof body.client_id === 'number' ? String(body.client_id) : '';
      const upstreamCid = cid ? iso.clientIds.upstreamFor(p.username, cid) : iso.clientIds.nobody();
      body.prompt_id = promptId;
      body.client_id = upstreamCid;
      // ComfyUI falls back to extra_data.client_id when the top-level one is absent; never let that name a socket.
      if (isObj(body.extra_data) && 'client_id' in body.extra_data) body.extra_data.client_id = upstreamCid;
      iso.ledger.add({ id: promptId, owner: p.username, clientId: cid, upstreamClientId: upstreamCid });
      const headers = upstreamHeaders(req, ctx, iso.cookieName, iso.upstream);
      headers['content-type'] = 'application/json';
      let up;
      try {
        up = await callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, JSON.stringify(body));
      } catch (e) {
        iso.ledger.remove(promptId);
        throw e;
      }
      if (up.status !== 200) iso.ledger.remove(promptId);
      sendUpstream(req, res, up);
    },
  };
}

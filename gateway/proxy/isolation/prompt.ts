import crypto from 'node:crypto';
import type { Interceptor } from '../../app';
import type { IsolationContext } from './context';
import {
  callUpstream,
  isObj,
  parseJsonObject,
  readBody,
  seesAll,
  sendJson,
  sendUpstream,
  upstreamHeaders,
  upstreamJson,
  upstreamUrl,
} from './http';
import { stringifyJson } from './json';
import type { NodeFacts } from './nodeSchema';
import { createUrlGuard } from './urlInputs';
import { isUnderUser, parseAnnotated, pathNotAllowed, splitUserPath, underUser, type FileType } from './paths';

/** Inputs that name where a node saves: `filename_prefix` and its relatives (a saver's bare `prefix`: SaveLoRA). */
const SAVE_PREFIX = /filename_prefix/i;
/** Inputs that name an output directory (image-saver style nodes). */
const SAVE_DIR = /^(output|save)_(path|dir|directory|folder)$/i;
/** Any other input named like a file or folder (`folder`, `file_path`, `folder_name`, …), read or written. */
const PATH_NAME = /(^|_)(path|dir|directory|folder|file|filename|filepath|dirname|foldername)$|(^|_)(file|folder|dir)_name$/i;
/** Inputs confined as files whatever the schema says (a second net under the schema's file inputs). */
const LOADER_INPUTS = new Set(['image', 'mask', 'file', 'audio', 'video', 'model_file', 'latent']);
const URL_SCHEME = /^([a-z][a-z0-9+.-]*):\/\//i;

/** How an input is confined: a save prefix (names files), a loader value (annotated, URLs allowed), a folder. */
type Kind = 'prefix' | 'load' | 'dir';

function kindOf(name: string, saver: boolean, unknown: boolean): Kind | null {
  const lower = name.toLowerCase();
  // A node ComfyUI could not describe might save: its bare `prefix` is held to a save prefix's rules.
  if (SAVE_PREFIX.test(name) || ((saver || unknown) && lower === 'prefix')) return 'prefix';
  if (!saver && LOADER_INPUTS.has(lower)) return 'load';
  if (SAVE_DIR.test(name) || PATH_NAME.test(name)) return 'dir';
  return null;
}

/**
 * Rewrites one prompt graph in place so every path-like input stays inside the user's folders (DESIGN §7).
 * Saves get `<user>/` in front; loader inputs are read from `<user>/…` of their area (input unless annotated);
 * temp files may be loaded from the user's own folder or when one of the user's prompts produced them; other
 * path-named inputs become `<user>/…`. Anything else is PATH_NOT_ALLOWED. On loaders and savers, and for every
 * save prefix, a path must be written out: a link (`["1", 0]`) would hand the node whatever another node computes.
 * `confineReads: false` (admins, who may read everything) leaves reads alone; what they save is prefixed anyway.
 */
export function confinePromptPaths(
  prompt: unknown,
  user: string,
  ownsTemp: (subfolder: string, filename: string) => boolean,
  opts: { confineReads?: boolean; facts?: (classType: string) => NodeFacts | null | undefined } = {},
): void {
  const confineReads = opts.confineReads ?? true;
  if (!isObj(prompt)) return;
  for (const [nodeId, node] of Object.entries(prompt)) {
    if (!isObj(node) || !isObj(node.inputs)) continue;
    const cls = typeof node.class_type === 'string' ? node.class_type : '';
    // From the node's schema (nodeSchema.ts); a class ComfyUI could not describe is held to the loaders' rules.
    const facts = opts.facts?.(cls) ?? null;
    const saver = facts?.saver ?? false;
    const strict = facts ? facts.loader || facts.saver : true;
    for (const [name, value] of Object.entries(node.inputs)) {
      const kind = facts?.fileInputs.has(name) ? 'load' : kindOf(name, saver, !facts);
      if (!kind) continue;
      const writes = kind === 'prefix' || saver || SAVE_DIR.test(name);
      if (!confineReads && !writes) continue;
      const where = { node: nodeId, input: name };
      const one = (v: string, at: Record<string, unknown>) => confineValue(kind, v, user, at, ownsTemp);
      if (typeof value === 'string') node.inputs[name] = one(value, where);
      else if (typeof value === 'number' || typeof value === 'boolean') {
        if (kind === 'prefix') node.inputs[name] = one(String(value), where); // ComfyUI str()s it into a name
      } else if (strict && isObj(value)) {
        // Structured widgets (Load3D's captures) keep their paths one level down.
        const out: Record<string, unknown> = { ...value };
        for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k] = one(v, { ...where, member: k });
        node.inputs[name] = out;
      } else if (strict || writes) {
        throw pathNotAllowed('a path must be written out, not taken from another node', where);
      }
    }
  }
}

function confineValue(
  kind: Kind,
  value: string,
  user: string,
  where: Record<string, unknown>,
  ownsTemp: (subfolder: string, filename: string) => boolean,
): string {
  if (kind === 'load') return confineLoaderValue(value, user, where, ownsTemp);
  const s = splitUserPath(value, where);
  return kind === 'prefix' ? underUser(user, s.length ? s : ['ComfyUI'], 'file').join('/') : underUser(user, s).join('/');
}

function confineLoaderValue(
  value: string,
  user: string,
  where: Record<string, unknown>,
  ownsTemp: (subfolder: string, filename: string) => boolean,
): string {
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
    // Temp files are the user's when uploaded into their folder (webcam, 3D captures) or made by their prompts.
    if (!isUnderUser(user, s) && !ownsTemp(s.slice(0, -1).join('/'), s[s.length - 1]))
      throw pathNotAllowed('not a preview of your own prompts', where);
    return s.join('/') + suffix;
  }
  return underUser(user, s, 'file').join('/') + suffix;
}

/** POST /prompt: internal URLs refused, the gateway's prompt id, a client_id bound to the user, confined paths, then the ledger. */
export function promptInterceptor(iso: IsolationContext): Interceptor {
  const urls = createUrlGuard({ allow: iso.config.prompt_url_allow, upstreamOrigin: iso.upstream.origin });
  return {
    id: 'isolation-prompt',
    routes: [{ path: '/prompt', methods: ['POST'] }],
    async handle(req, res, ctx) {
      const p = ctx.principal!;
      const body = parseJsonObject(await readBody(req));
      // URL-loading nodes fetch from the ComfyUI host, behind the gateway: a user may not point them inside.
      if (p.role !== 'admin') await urls.check(body.prompt);
      if (iso.separate) {
        const classes = isObj(body.prompt)
          ? Object.values(body.prompt).map((n) => (isObj(n) && typeof n.class_type === 'string' ? n.class_type : ''))
          : [];
        const facts = await iso.schemas.factsFor(classes.filter(Boolean));
        confinePromptPaths(
          body.prompt,
          p.username,
          (subfolder, filename) => iso.ledger.ownsFile(p.username, { type: 'temp', subfolder, filename }),
          {
            confineReads: !seesAll(p, iso.separate),
            facts: (cls) => facts.get(cls),
          },
        );
      }
      // Over a limit: refused before anything is recorded or sent (429 QUEUE_LIMIT / QUOTA_EXCEEDED).
      iso.queue?.admit(p);
      // Jumping the shared queue (`front`, a chosen `number`) is an admin's call, not every user's.
      if (!seesAll(p, iso.separate)) {
        delete body.front;
        delete body.number;
      }
      const promptId = crypto.randomUUID();
      // ComfyUI falls back to extra_data.client_id when the top-level one is absent (scripts use either): both name
      // the caller's own socket, so both are mapped to the caller's upstream id and never name a socket as given.
      const given = 'client_id' in body ? body.client_id : isObj(body.extra_data) ? body.extra_data.client_id : undefined;
      const cid = typeof given === 'string' || typeof given === 'number' ? String(given) : '';
      const upstreamCid = cid ? iso.clientIds.upstreamFor(p.username, cid) : iso.clientIds.nobody();
      body.prompt_id = promptId;
      body.client_id = upstreamCid;
      if (isObj(body.extra_data) && 'client_id' in body.extra_data) body.extra_data.client_id = upstreamCid;
      iso.ledger.add({ id: promptId, owner: p.username, clientId: cid, upstreamClientId: upstreamCid });
      const headers = upstreamHeaders(req, ctx, iso.cookieName, iso.upstream);
      headers['content-type'] = 'application/json';
      // Events of this prompt may beat ComfyUI's answer to the socket: ws.ts holds them until this ends.
      let settle = () => {};
      const send = (upstream = iso.upstream) => {
        settle = iso.promptIds.begin(upstreamCid);
        return callUpstream(upstream, 'POST', upstreamUrl(ctx), headers, stringifyJson(body));
      };
      let up;
      try {
        if (!iso.queue) up = await send();
        else {
          // The gateway's queue: sent now when a worker is idle and nobody waits, else held (and answered here).
          const out = await iso.queue.submit(
            {
              id: promptId,
              username: p.username,
              role: p.role,
              body: stringifyJson(body),
              comfyUser: p.comfyUser ?? null,
              clientId: cid,
              upstreamClientId: upstreamCid,
              front: seesAll(p, iso.separate) && !!body.front,
            },
            (w) => send(w.upstream),
          );
          if (out.held) return sendJson(req, res, { prompt_id: promptId, number: out.number, node_errors: {} });
          up = out.up;
        }
      } catch (e) {
        iso.ledger.remove(promptId);
        settle();
        throw e;
      }
      if (up.status !== 200) {
        iso.ledger.remove(promptId);
        settle();
        return sendUpstream(req, res, up);
      }
      const answer = upstreamJson(up);
      const theirs = isObj(answer) ? answer.prompt_id : undefined;
      if (typeof theirs === 'string' && theirs) iso.promptIds.answered(promptId, theirs);
      settle();
      // The client always sees the gateway's id, whatever ComfyUI called the prompt.
      if (isObj(answer) && typeof theirs === 'string' && theirs !== promptId)
        return sendJson(req, res, { ...answer, prompt_id: promptId }, 200, up);
      sendUpstream(req, res, up);
    },
  };
}

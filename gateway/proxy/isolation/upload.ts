import http from 'node:http';
import https from 'node:https';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Transform } from 'node:stream';
import type { Interceptor } from '../../app';
import { AppError } from '../../errors';
import type { RequestContext } from '../../http/context';
import { sendError } from '../../http/render';
import type { IsolationContext } from './context';
import { isObj, seesAll, segs, upstreamHeaders, upstreamUrl } from './http';
import { parseJson, stringifyJson } from './json';
import { formDataBoundary, multipartRewriter } from './multipart';
import { isFileType, isUnderUser, normaliseRef, parseAnnotated, pathNotAllowed, splitUserPath, underUser } from './paths';
import { HOP_BY_HOP } from '../headers';

/**
 * POST /upload/image and /upload/mask. The multipart body is rewritten as it streams (never buffered, so a
 * 200 MB upload costs a few chunks of memory): only the fields ComfyUI reads are accepted, each once and as UTF-8
 * (no `_charset_`, part charset or transfer encoding: see formHeaders.ts); `subfolder` becomes
 * `<user>/<subfolder>` (one is added when the client sent none), `type` must name an area, file names must be a
 * single plain segment, and the mask's `original_ref` must name a file the user may read. A refusal found before the first byte is forwarded never reaches ComfyUI; one found
 * later aborts the upstream request, and ComfyUI (which parses the whole body before writing) writes nothing.
 */
export function uploadInterceptor(iso: IsolationContext): Interceptor {
  return {
    id: 'isolation-upload',
    routes: [
      { path: '/upload/image', methods: ['POST'] },
      { path: '/upload/mask', methods: ['POST'] },
    ],
    async handle(req, res, ctx) {
      const p = ctx.principal!;
      const boundary = formDataBoundary(req.headers['content-type']);
      if (!boundary) {
        req.resume();
        throw new AppError(400, 'INVALID_BODY', 'Uploads must be multipart/form-data with a boundary');
      }
      const readsAll = seesAll(p, iso.separate);
      const isMask = segs(ctx)[1] === 'mask';
      const rewriter = multipartRewriter({
        boundary,
        // Exactly the fields ComfyUI's upload routes read (server.py image_upload / upload_mask); nothing else passes.
        fields: {
          subfolder: (v) => underUser(p.username, splitUserPath(v, { field: 'subfolder' })).join('/'),
          type: (v) => {
            if (!isFileType(v)) throw new AppError(400, 'INVALID_BODY', 'type must be input, output or temp', { field: 'type' });
            return v;
          },
          overwrite: (v) => v,
          ...(isMask ? { original_ref: (v: string) => originalRef(v, p.username, readsAll, iso) } : {}),
        },
        files: {
          image(name) {
            const s = splitUserPath(name, { field: 'filename' });
            if (s.length !== 1) throw pathNotAllowed('file names may not contain directories', { field: 'filename' });
          },
        },
        ensure: { subfolder: () => p.username },
      });
      await streamUpstream(req, res, ctx, rewriter, iso);
    },
  };
}

/** Validates the mask's reference to the image it is painted on; returns it re-serialised from what was checked. */
function originalRef(text: string, user: string, readsAll: boolean, iso: IsolationContext): string {
  const ref = parseJson(text);
  if (!isObj(ref) || typeof ref.filename !== 'string') throw new AppError(400, 'INVALID_BODY', 'original_ref needs a filename');
  const ann = parseAnnotated(ref.filename);
  const type = ann.type ?? (ref.type === undefined ? 'output' : ref.type);
  if (!isFileType(type)) throw pathNotAllowed('unknown file type', { field: 'original_ref' });
  // ComfyUI joins the subfolder with the whole filename here (no basename), so directories in it count.
  const { ref: f, segs } = normaliseRef(type, typeof ref.subfolder === 'string' ? ref.subfolder : '', ann.name, { keepDirs: true });
  if (!readsAll && !isUnderUser(user, segs) && !iso.ledger.ownsFile(user, f))
    throw pathNotAllowed('not your file', { field: 'original_ref' });
  return stringifyJson({ ...ref, filename: f.filename, subfolder: f.subfolder, type });
}

/** How much of a rewritten upload is held before ComfyUI is called (per upload in flight). */
const HOLD_BACK = 1024 * 1024;

/** Pipes the rewritten body to ComfyUI (opened only once there is something to send) and its answer back. */
function streamUpstream(
  req: IncomingMessage,
  res: ServerResponse,
  ctx: RequestContext,
  rewriter: Transform,
  iso: IsolationContext,
): Promise<void> {
  return new Promise((resolve) => {
    const target = new URL(iso.upstream.origin);
    const lib = target.protocol === 'https:' ? https : http;
    const headers: OutgoingHttpHeaders = upstreamHeaders(req, ctx, iso.cookieName, iso.upstream);
    delete headers['accept-encoding'];
    headers['content-type'] = req.headers['content-type'];
    let up: http.ClientRequest | null = null;
    let answering = false; // ComfyUI's answer is on its way to the client
    let stopped = false;

    /** Stops sending: the rest of the client's body is read and discarded. */
    const stopSending = () => {
      if (stopped) return;
      stopped = true;
      req.unpipe(rewriter);
      rewriter.destroy();
      req.resume();
    };

    const fail = (err: unknown) => {
      if (answering) {
        // ComfyUI already answered (e.g. 413) and may have closed its side: keep relaying that answer.
        stopSending();
        return;
      }
      if (stopped) return;
      stopSending();
      up?.destroy();
      if (!res.headersSent) {
        // The client may still be sending: answer, then close the connection.
        res.setHeader('Connection', 'close');
        sendError(req, res, err);
        res.once('finish', () => req.destroy());
      } else res.destroy();
      resolve();
    };

    const open = () => {
      up = lib.request({
        protocol: target.protocol,
        hostname: target.hostname,
        port: target.port,
        method: 'POST',
        path: upstreamUrl(ctx),
        headers,
        agent: iso.upstream.agent,
      });
      up.on('error', () => fail(new AppError(502, 'UPSTREAM_UNAVAILABLE', 'ComfyUI is not reachable right now; try again shortly')));
      up.on('response', (upRes) => {
        answering = true;
        const h: OutgoingHttpHeaders = {};
        for (const [k, v] of Object.entries(upRes.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) h[k] = v;
        h['x-content-type-options'] = 'nosniff';
        res.writeHead(upRes.statusCode ?? 502, h);
        upRes.pipe(res);
        // Remember what the user uploaded (ComfyUI's small JSON answer names it), for their loader dropdowns.
        const answer: Buffer[] = [];
        let answerSize = 0;
        upRes.on('data', (c: Buffer) => {
          answerSize += c.length;
          if (answerSize <= 64 * 1024) answer.push(c);
        });
        upRes.on('end', () => {
          if (upRes.statusCode === 200 && answerSize <= 64 * 1024 && ctx.principal)
            rememberUpload(iso, ctx.principal.username, Buffer.concat(answer));
          if (stopped) up?.destroy(); // its body was cut short: the connection cannot be reused
          resolve();
        });
        upRes.on('error', () => {
          res.destroy();
          resolve();
        });
      });
      return up;
    };

    // The first HOLD_BACK bytes are held until the body is checked to its end or grows past them: a refused small
    // upload (every trick here fits) never reaches ComfyUI; a longer one is streamed and aborted on refusal.
    let held: Buffer[] | null = [];
    let heldSize = 0;
    const send = (chunk: Buffer) => {
      const u = up ?? open();
      if (!u.write(chunk)) {
        rewriter.pause();
        u.once('drain', () => rewriter.resume());
      }
    };
    const release = () => {
      const h = held;
      held = null;
      if (h?.length) send(Buffer.concat(h));
    };
    rewriter.on('data', (chunk: Buffer) => {
      if (held) {
        held.push(chunk);
        if ((heldSize += chunk.length) > HOLD_BACK) release();
      } else send(chunk);
    });
    rewriter.on('end', () => {
      release();
      (up ?? open()).end();
    });
    rewriter.on('error', fail);
    req.on('error', fail);
    req.on('close', () => {
      if (req.complete) return;
      // The client went away mid-upload: ComfyUI must see a truncated body (and so write nothing).
      up?.destroy();
      fail(new AppError(400, 'INVALID_BODY', 'Upload interrupted'));
    });
    req.pipe(rewriter);
  });
}

/** Records an upload ComfyUI accepted into the user's own input folder (`{name, subfolder, type}`). */
function rememberUpload(iso: IsolationContext, user: string, body: Buffer): void {
  let j: unknown;
  try {
    j = JSON.parse(body.toString('utf8'));
  } catch {
    return;
  }
  if (typeof j !== 'object' || j === null) return;
  const { name, subfolder, type } = j as Record<string, unknown>;
  if (typeof name !== 'string' || !name || (type !== undefined && type !== 'input')) return;
  const full = typeof subfolder === 'string' && subfolder ? `${subfolder}/${name}` : name;
  if (full.startsWith(`${user}/`)) iso.uploads.add(user, full);
}

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { AppError } from '../errors';
import { peekContext } from './context';

/** True for a browser navigation that would rather see a page than JSON. */
export function wantsHtml(req: IncomingMessage): boolean {
  const accept = req.headers.accept ?? '';
  return (req.method === 'GET' || req.method === 'HEAD') && /\btext\/html\b/i.test(accept);
}

/** Escapes text for HTML. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Normalises anything thrown into an AppError (unknown errors become a bland 500). */
export function toAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  const e = err as { status?: number; statusCode?: number; type?: string; expose?: boolean };
  const status = e?.status ?? e?.statusCode;
  // body-parser / raw-body errors carry a status and a type
  if (e?.type === 'entity.too.large') return new AppError(413, 'PAYLOAD_TOO_LARGE', 'Request body too large');
  if (e?.type === 'entity.parse.failed') return new AppError(400, 'INVALID_BODY', 'Malformed JSON body');
  if (typeof status === 'number' && status >= 400 && status < 500 && e.expose)
    return new AppError(status, 'INVALID_REQUEST', (err as Error).message);
  return new AppError(500, 'INTERNAL_ERROR', 'Internal error');
}

/** The error envelope `{"error":{code,message,details}}`. */
export function errorBody(e: AppError): string {
  return JSON.stringify({ error: { code: e.code, message: e.message, details: e.details } });
}

/** A small self-contained HTML error page (no scripts). */
export function errorPage(e: AppError): string {
  return `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${e.status} ${escapeHtml(e.code)}</title><link rel="stylesheet" href="/gateway/static/gateway.css"></head><body><main class="card"><h1>${escapeHtml(e.message)}</h1><p class="code">${e.status} · ${escapeHtml(e.code)}</p><p><a href="/">Back</a> · <a href="/login">Sign in</a></p></main></body></html>`;
}

/** The one renderer for refusals: JSON envelope, or an HTML page for browsers. */
export function sendError(req: IncomingMessage, res: ServerResponse, err: unknown): void {
  const e = toAppError(err);
  const ctx = peekContext(req);
  if (ctx) ctx.errorCode = e.code;
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const html = wantsHtml(req);
  const body = html ? errorPage(e) : errorBody(e);
  res.statusCode = e.status;
  for (const [k, v] of Object.entries(e.headers)) res.setHeader(k, v);
  res.setHeader('Content-Type', html ? 'text/html; charset=utf-8' : 'application/json; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  // A refused request whose body is still coming: close the connection instead of reading the rest (a refused
  // 200 MB upload, or a client trickling bytes, must not hold the socket).
  if (!req.complete) res.setHeader('Connection', 'close');
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** Refuses a WebSocket upgrade with a plain HTTP response on the raw socket. */
export function rejectUpgrade(socket: Duplex, err: unknown): void {
  const e = toAppError(err);
  const body = errorBody(e);
  const reason =
    {
      400: 'Bad Request',
      401: 'Unauthorized',
      403: 'Forbidden',
      404: 'Not Found',
      429: 'Too Many Requests',
      502: 'Bad Gateway',
      503: 'Service Unavailable',
    }[e.status] ?? 'Error';
  if (!socket.writable) return void socket.destroy();
  const extra = Object.entries(e.headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  socket.end(
    `HTTP/1.1 ${e.status} ${reason}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

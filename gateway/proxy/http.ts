import type { IncomingMessage, ServerResponse } from 'node:http';
import { createProxyMiddleware, proxyEventsPlugin } from 'http-proxy-middleware';
import { AppError } from '../errors';
import { getContext } from '../http/context';
import { sendError } from '../http/render';
import type { Logger } from '../log';
import { FILE_ROUTES, isActiveContent, sanitizeHeaders, upstreamUrl } from './headers';
import type { Upstream } from './upstream';

/** Streams an admitted request to ComfyUI and its response back (bodies never buffered). */
export function createHttpProxy(deps: { upstream: Upstream; cookieName: string; logger: Logger }) {
  const upstreamUnavailable = () =>
    new AppError(502, 'UPSTREAM_UNAVAILABLE', 'ComfyUI is not reachable right now; try again shortly');

  const proxy = createProxyMiddleware<IncomingMessage, ServerResponse>({
    target: deps.upstream.origin,
    changeOrigin: true,
    xfwd: false,
    ws: false,
    agent: deps.upstream.agent,
    // Our own error rendering and logging replace HPM's defaults; only its event wiring (for `on`) is kept.
    ejectPlugins: true,
    plugins: [proxyEventsPlugin],
    on: {
      proxyRes(proxyRes, req, res) {
        // http-proxy leaves the other half dangling when one side goes mid-body: a client that leaves would hold the
        // upstream socket (the agent has 64) forever, and a client whose upstream died would wait forever.
        res.once('close', () => {
          if (!res.writableFinished) proxyRes.destroy();
        });
        proxyRes.once('close', () => {
          if (!proxyRes.complete) res.destroy();
        });
        const h = proxyRes.headers;
        h['x-content-type-options'] = 'nosniff';
        const ctx = getContext(req);
        if (FILE_ROUTES.has(ctx.route.segments[0]?.toLowerCase() ?? '') && isActiveContent(h['content-type'] as string | undefined)) {
          // A same-origin script would act as the signed-in user, so user files never render here.
          const name = /filename="?([^";]+)"?/i.exec(String(h['content-disposition'] ?? ''))?.[1] ?? 'download';
          h['content-disposition'] = `attachment; filename="${name.replace(/[^\w.\- ()]/g, '_')}"`;
          h['content-security-policy'] = "sandbox; default-src 'none'";
        }
      },
      error(err, req, res) {
        const code = (err as NodeJS.ErrnoException).code;
        deps.logger.warn({ err: { message: err.message, code }, path: req.url }, 'upstream error');
        if (!('setHeader' in res)) return void res.destroy();
        const r = res as ServerResponse;
        // The client may already be gone (aborted upload): nothing to answer then. (req.destroyed is no
        // signal: a fully read request body is destroyed too.)
        if (r.destroyed || r.writableEnded) return;
        sendError(req, r, upstreamUnavailable());
      },
    },
  });

  return {
    /** Forwards one admitted request; context must already be set by the front door. */
    forward(req: IncomingMessage, res: ServerResponse): void {
      const ctx = getContext(req);
      sanitizeHeaders(req, ctx, { cookieName: deps.cookieName, upstreamOrigin: deps.upstream.origin });
      req.url = upstreamUrl(ctx);
      proxy(req, res, (err?: unknown) => sendError(req, res, err ?? upstreamUnavailable())).catch((err) => sendError(req, res, err));
    },
  };
}

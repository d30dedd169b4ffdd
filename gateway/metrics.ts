import http, { type IncomingMessage } from 'node:http';
import client from 'prom-client';
import type { RouteMount } from './app';
import type { AuditEvent } from './audit';
import type { RequestContext } from './http/context';
import type { Logger } from './log';

/** Prometheus metrics for one gateway (its own registry: no module singleton, tests run several gateways). */
export interface Metrics {
  /** one call per finished request or refused upgrade, from the front door's access log */
  observe(req: IncomingMessage, status: number, ms: number, ctx: RequestContext | undefined, errorCode: string | undefined): void;
  /** one call per audit record: logins, lockouts, downloads */
  event(e: AuditEvent): void;
  /** GET /metrics (admin-only by the policy table) */
  routes: RouteMount;
  /** the optional plain listener on 127.0.0.1:metrics.port for a local scraper */
  listen(port: number): Promise<void>;
  close(): Promise<void>;
}

const LOGIN = { login_success: 'success', login_failure: 'failure' } as const;
const DOWNLOAD = {
  model_download_start: 'started',
  model_download_finish: 'finished',
  model_download_failed: 'failed',
  model_download_cancel: 'cancelled',
} as const;

/** Builds the registry and its metrics; `openWebSockets` is read at scrape time. */
export function createMetrics(deps: { openWebSockets: () => number; logger: Logger }): Metrics {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'comfyui_gateway_' });
  const requests = new client.Counter({
    name: 'comfyui_gateway_http_requests_total',
    help: 'Requests and WebSocket handshakes by route family (policy rule), owner (gateway or comfy) and status',
    labelNames: ['family', 'owner', 'status'] as const,
    registers: [registry],
  });
  const upstream = new client.Histogram({
    name: 'comfyui_gateway_upstream_request_duration_seconds',
    help: 'Time to the end of the response for admitted requests proxied to ComfyUI, by route family',
    labelNames: ['family'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  const refusals = new client.Counter({
    name: 'comfyui_gateway_refusals_total',
    help: 'Requests the gateway refused, by error code (the error.code of the response)',
    labelNames: ['code'] as const,
    registers: [registry],
  });
  new client.Gauge({
    name: 'comfyui_gateway_websockets_open',
    help: 'Relayed WebSockets currently open',
    registers: [registry],
    collect() {
      this.set(deps.openWebSockets());
    },
  });
  const logins = new client.Counter({
    name: 'comfyui_gateway_logins_total',
    help: 'Sign-in attempts by result',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  const lockouts = new client.Counter({
    name: 'comfyui_gateway_lockouts_total',
    help: 'Brute-force lockouts started',
    registers: [registry],
  });
  const downloads = new client.Counter({
    name: 'comfyui_gateway_model_downloads_total',
    help: 'Model downloads by outcome',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  for (const r of Object.values(LOGIN)) logins.inc({ result: r }, 0);
  for (const r of Object.values(DOWNLOAD)) downloads.inc({ result: r }, 0);
  lockouts.inc(0);

  let server: http.Server | null = null;
  const body = async () => ({ type: registry.contentType, text: await registry.metrics() });

  return {
    observe(_req, status, ms, ctx, errorCode) {
      const family = ctx ? (ctx.decision.rule.family ?? ctx.decision.rule.id) : 'none';
      const owner = ctx?.decision.rule.owner ?? 'gateway';
      requests.inc({ family, owner, status: String(status) });
      if (errorCode) refusals.inc({ code: errorCode });
      else if (owner === 'comfy') upstream.observe({ family }, ms / 1000);
    },
    event(e) {
      if (e.event in LOGIN) logins.inc({ result: LOGIN[e.event as keyof typeof LOGIN] });
      else if (e.event === 'lockout') lockouts.inc();
      else if (e.event in DOWNLOAD) downloads.inc({ result: DOWNLOAD[e.event as keyof typeof DOWNLOAD] });
    },
    routes: (app) => {
      app.get('/metrics', async (_req, res, next) => {
        try {
          const { type, text } = await body();
          res.setHeader('Content-Type', type);
          res.setHeader('Cache-Control', 'no-store');
          res.end(text);
        } catch (e) {
          next(e);
        }
      });
    },
    async listen(port) {
      server = http.createServer((req, res) => {
        if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
          res.statusCode = 404;
          return void res.end();
        }
        body().then(
          ({ type, text }) => {
            res.setHeader('Content-Type', type);
            res.end(text);
          },
          (err) => {
            deps.logger.error({ err }, 'metrics scrape failed');
            res.statusCode = 500;
            res.end();
          },
        );
      });
      // Loopback only: the plain listener has no authentication.
      await new Promise<void>((resolve, reject) => {
        server!.once('error', reject);
        server!.listen(port, '127.0.0.1', () => resolve());
      });
    },
    async close() {
      const s = server;
      server = null;
      if (s) await new Promise<void>((r) => s.close(() => r()));
    },
  };
}

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import express from 'express';
import type { Audit } from './audit';
import type { CredentialChain } from './auth/chain';
import { clearedCookie } from './auth/cookie';
import { checkCsrf } from './auth/csrf';
import type { ResolvedConfig } from './config/load';
import { AppError, errors } from './errors';
import { getContext, setContext, peekContext, type RequestContext } from './http/context';
import { rejectUpgrade, sendError, toAppError, wantsHtml } from './http/render';
import { createAccessLog, redactUrl, type Logger } from './log';
import { canonicalize, encodePath } from './proxy/canonical';
import { stripTokenQuery } from './proxy/headers';
import { createHttpProxy } from './proxy/http';
import type { Policy } from './proxy/policy';
import type { Upstream } from './proxy/upstream';
import { createWsRelay, type WsHooks } from './proxy/ws';
import type { WorkerSockets } from './proxy/wsExtra';
import type { Revocations } from './auth/revocations';

/** A check run on every request after the route is known and before authentication (IP lists, CF Access). */
export type Gate = (req: IncomingMessage, ctx: RequestContext) => void | Promise<void>;

/** A ComfyUI route the gateway must read or rewrite instead of streaming blindly (isolation, injection). */
export interface Interceptor {
  /** unique: its specs in the policy table are named after it */
  id: string;
  /** where it applies (canonical, lower-case, `*` = one segment; exact unless `prefix`); each becomes a route spec */
  routes: { path: string; methods?: string[]; prefix?: boolean }[];
  /** `forward()` streams the request to ComfyUI through the normal proxy (after the handler adjusted ctx.route) */
  handle(req: IncomingMessage, res: ServerResponse, ctx: RequestContext, forward: () => void): Promise<void>;
}

/** A feature's gateway-owned routes, written Express-style; recorded into route specs (http/served.ts), never mounted. */
export type RouteMount = (app: express.Express) => void;

/** Everything createApp needs; built by compose.ts (production and tests alike). */
export interface AppDeps {
  config: ResolvedConfig;
  logger: Logger;
  audit: Audit;
  upstream: Upstream;
  chain: CredentialChain;
  policy: Policy;
  clientIp: (req: IncomingMessage) => string;
  /** whether the request reached us over HTTPS (TLS socket, or a trusted proxy's word) */
  isSecure?: (req: IncomingMessage) => boolean;
  /** the host the browser asked for (a trusted proxy's X-Forwarded-Host, else Host): the origin CSRF compares with */
  originalHost?: (req: IncomingMessage) => string | undefined;
  gates?: Gate[];
  /** run after authentication on every admitted request that has a principal (e.g. resolve the ComfyUI user id) */
  enrichers?: Gate[];
  /** run before every gateway-owned answer, errors included (security headers); from collectRoutes */
  gatewayMiddleware?: express.RequestHandler[];
  wsHooks?: WsHooks;
  /** credential invalidations: the WebSockets opened with a voided credential are closed (1008) */
  revocations?: Revocations;
  pingIntervalMs?: number;
  /** called once per finished request or refused upgrade, beside its access line (metrics) */
  observe?: (req: IncomingMessage, status: number, ms: number, ctx: RequestContext | undefined, errorCode: string | undefined) => void;
  /** opens the other ComfyUI workers' sockets for a relayed socket (gateway/queue Workers): it hears their events too */
  workerSockets?: WorkerSockets;
  /** handles a request before the front door at all (force_https redirects); returns true when it answered */
  preflight?: (req: IncomingMessage, res: ServerResponse) => boolean;
}

/** The gateway: a request handler and an upgrade handler for a node http(s) server, plus shutdown hooks. */
export interface Gateway {
  handle(req: IncomingMessage, res: ServerResponse): void;
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  express: express.Express;
  /** the one table that decides access and who serves each route (enumerated by tests) */
  policy: Policy;
  /** closes WebSockets with 1001 */
  closeSockets(): void;
  /** requests currently being served */
  inFlight(): number;
  /** relayed WebSockets currently open */
  openWebSockets(): number;
}

/** Public routes that start or end a session: a foreign Origin may not drive them (login CSRF). */
const SESSION_FORMS = new Set(['login', 'register', 'logout']);

/** Builds the gateway without listening: the front door, the gateway's own routes, the proxy. */
export function createApp(deps: AppDeps): Gateway {
  const { config, logger, chain, policy } = deps;
  const cookieName = config.cookie.name;
  const proxy = createHttpProxy({
    upstream: deps.upstream,
    cookieName,
    logger,
    headerTimeoutMs: (config.upstream_timeout_s ?? 300) * 1000,
  });
  const relay = createWsRelay({
    upstreamOrigin: deps.upstream.origin,
    cookieName,
    logger,
    pingIntervalMs: deps.pingIntervalMs,
    hooks: deps.wsHooks,
    revocations: deps.revocations,
    workerSockets: deps.workerSockets,
  });
  const isSecure = deps.isSecure ?? ((req: IncomingMessage) => !!(req.socket as { encrypted?: boolean }).encrypted);
  const ownHost = deps.originalHost ?? ((req: IncomingMessage) => req.headers.host);
  let inFlight = 0;
  const writeAccess = createAccessLog(logger);
  const gates = deps.gates ?? [];
  const enrichers = deps.enrichers ?? [];

  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', 'simple');
  for (const mw of deps.gatewayMiddleware ?? []) app.use(mw);
  // Only the spec decide() picked answers; a gateway path no spec serves is 404.
  app.use((req, res, next) => {
    const serve = getContext(req).decision.rule.serve;
    if (serve) serve(req, res, next);
    else next();
  });
  app.use((_req, _res, next) => next(errors.notFound()));
  app.use((err: unknown, req: express.Request, res: express.Response, _next: express.NextFunction) => {
    if ((err as AppError).status === undefined || (err as AppError).status >= 500) logger.error({ err }, 'handler error');
    sendError(req, res, err);
  });

  /** The front door: who is calling, from where, for which canonical route, and may they. */
  async function admit(req: IncomingMessage, isUpgrade: boolean): Promise<RequestContext> {
    const clientIp = deps.clientIp(req);
    const route = canonicalize(req.url ?? '/');
    let query: URLSearchParams | undefined;
    const ctx: RequestContext = {
      clientIp,
      route,
      decision: policy.decide(route, req.method ?? 'GET'),
      // parsed when first asked for: most requests never look at their query
      get query() {
        return (query ??= new URLSearchParams(route.query));
      },
      principal: null,
      secure: isSecure(req),
      startedAt: process.hrtime.bigint(),
    };
    setContext(req, ctx);
    // Most gates decide synchronously; awaiting only a promise saves a microtask turn per gate per request.
    for (const gate of gates) {
      const pending = gate(req, ctx);
      if (pending) await pending;
    }
    const { access } = ctx.decision;
    if (access === 'public') {
      // Public routes may still use who is calling (health details, logout, admin registration).
      try {
        ctx.principal = await chain.authenticate(req, route.query ? ctx.query : undefined);
      } catch (e) {
        if (!(e instanceof AppError) || e.status !== 401) throw e;
        ctx.principal = null;
      }
      checkCsrf(req, ctx.principal, {
        ownHost: ownHost(req),
        isUpgrade,
        sessionForm: SESSION_FORMS.has(ctx.decision.rule.family ?? ctx.decision.rule.id),
        getChangesState: ctx.decision.getChangesState,
      });
      return ctx;
    }
    ctx.principal = await chain.authenticate(req, route.query ? ctx.query : undefined);
    if (!ctx.principal) throw errors.authRequired();
    checkCsrf(req, ctx.principal, { ownHost: ownHost(req), isUpgrade, getChangesState: ctx.decision.getChangesState });
    if (access === 'admin' && ctx.principal.role !== 'admin') throw errors.forbidden('This route is for administrators');
    for (const enrich of enrichers) {
      const pending = enrich(req, ctx);
      if (pending) await pending;
    }
    return ctx;
  }

  function loginRedirect(req: IncomingMessage, res: ServerResponse, ctx: RequestContext | undefined, staleCookie: boolean): void {
    // A revoked or expired session cookie is dropped, so the login page does not keep tripping over it.
    if (staleCookie) res.setHeader('Set-Cookie', clearedCookie(config, !!ctx?.secure || config.force_https));
    const next = ctx ? ctx.route.forwardPath + (stripTokenQuery(ctx.route.query) ? `?${stripTokenQuery(ctx.route.query)}` : '') : '/';
    res.statusCode = 302;
    res.setHeader('Location', `/login?next=${encodeURIComponent(next)}`);
    res.setHeader('Cache-Control', 'no-store');
    res.end();
  }

  function accessLog(req: IncomingMessage, res: Pick<ServerResponse, 'statusCode'>, rawUrl: string, started: bigint, errorCode?: string) {
    const ctx = peekContext(req);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    deps.observe?.(req, res.statusCode, ms, ctx, errorCode ?? ctx?.errorCode);
    writeAccess({
      method: req.method,
      path: redactUrl(rawUrl),
      status: res.statusCode,
      ms,
      ip: ctx?.clientIp ?? deps.clientIp(req),
      user: ctx?.principal?.username,
    });
  }

  return {
    express: app,
    policy,
    handle(req, res) {
      const started = process.hrtime.bigint();
      const rawUrl = req.url ?? '/';
      inFlight++;
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        inFlight--;
        accessLog(req, res, rawUrl, started);
      };
      // 'close' follows 'finish' on every response, and also ends one whose client went away: one listener is enough.
      res.once('close', finish);
      req.on('error', () => undefined);
      if (deps.preflight?.(req, res)) return;
      admit(req, false).then(
        (ctx) => {
          const { rule } = ctx.decision;
          if (rule.owner === 'gateway') {
            // Re-encoded, so Express routes on exactly the segments the policy decided on (a decoded `%3F` would cut the path).
            req.url = encodePath(ctx.route.segments) + (ctx.route.query ? `?${ctx.route.query}` : '');
            app(req as express.Request, res as express.Response);
            return;
          }
          const icpt = rule.intercept;
          if (icpt) {
            return void icpt
              .handle(req, res, ctx, () => proxy.forward(req, res))
              .catch((e) => {
                // An AppError is an answer; anything else is a bug or an outage the log must show.
                if (!(e instanceof AppError))
                  logger.error({ err: e, interceptor: icpt.id, user: ctx.principal?.username }, 'interceptor error');
                sendError(req, res, e);
              });
          }
          proxy.forward(req, res);
        },
        (err) => {
          const ctx = peekContext(req);
          // Browser navigations without a header credential go to the login page rather than an error page.
          const headerCredential = req.headers.authorization !== undefined || req.headers['x-api-key'] !== undefined;
          if (err instanceof AppError && err.status === 401 && wantsHtml(req) && !headerCredential)
            return loginRedirect(req, res, ctx, err.code !== 'AUTH_REQUIRED');
          if (!(err instanceof AppError)) logger.error({ err }, 'front door error');
          sendError(req, res, err);
        },
      );
    },
    upgrade(req, socket, head) {
      const started = process.hrtime.bigint();
      const rawUrl = req.url ?? '/';
      socket.on('error', () => undefined);
      // A handshake the front door refuses gets its access line like any request (a guessed ?token= shows up, redacted).
      const refuse = (err: unknown) => {
        if (!(err instanceof AppError)) logger.error({ err }, 'front door error');
        rejectUpgrade(socket, err);
        const e = toAppError(err);
        accessLog(req, { statusCode: e.status }, rawUrl, started, e.code);
      };
      admit(req, true).then((ctx) => {
        // The table's `ws` spec, spelled as ComfyUI spells it (its routes are case-sensitive).
        if (!ctx.decision.rule.websocket || ctx.route.segments[0] !== 'ws') return refuse(errors.notFound('No WebSocket here'));
        relay.handleUpgrade(req, socket, head);
      }, refuse);
    },
    closeSockets: () => relay.closeAll(1001),
    inFlight: () => inFlight,
    openWebSockets: () => relay.sessions().size,
  };
}

export { getContext };

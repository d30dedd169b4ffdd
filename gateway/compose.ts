import type { IncomingMessage } from 'node:http';
import { createApp, type Gateway, type Gate, type Interceptor, type RouteMount } from './app';
import { createAudit, type Audit } from './audit';
import { createCredentialChain, type CredentialChainDeps } from './auth/chain';
import type { ResolvedConfig } from './config/load';
import { createLogger, type Logger } from './log';
import { createClientIp } from './net/clientIp';
import { createInjectInterceptor } from './proxy/inject';
import { createPolicy } from './proxy/policy';
import { createUpstream, type Upstream } from './proxy/upstream';
import { composeWsHooks, type WsHooks } from './proxy/ws';
import { healthRoutes } from './routes/health';
import { staticRoutes } from './routes/static';

/** Knobs for tests and the CLI that are not user configuration. */
export interface ComposeOptions {
  logger?: Logger;
  /** write logs to stdout (default true) */
  stdout?: boolean;
  pingIntervalMs?: number;
}

/** A built gateway with its services, ready to be served by a node http(s) server. */
export interface Composed {
  gateway: Gateway;
  config: ResolvedConfig;
  logger: Logger;
  audit: Audit;
  upstream: Upstream;
  /** lines main prints at start-up (how to set a key, setup codes) */
  notices: string[];
  /** flushes stores and stops background work */
  close(): Promise<void>;
}

/** Builds every store and service from the config and wires them into createApp (the one place that does). */
export async function composeGateway(config: ResolvedConfig, opts: ComposeOptions = {}): Promise<Composed> {
  const logger = opts.logger ?? createLogger({ levels: config.log_levels, file: config.paths.log, stdout: opts.stdout });
  const audit = createAudit(logger);
  const upstream = createUpstream(config.upstream);
  const clientIp = createClientIp(config);
  const notices: string[] = [];
  const closers: (() => Promise<void> | void)[] = [() => upstream.close()];

  const chainDeps: CredentialChainDeps = { apiKey: config.apiKey, cookieName: config.cookie.name };
  const gates: Gate[] = [];
  const routes: RouteMount[] = [staticRoutes(), healthRoutes({ upstream })];
  const interceptors: Interceptor[] = [];
  interceptors.push(createInjectInterceptor({ upstream, cookieName: config.cookie.name }));
  const enrichers: Gate[] = [];
  const wsHooks: WsHooks[] = [];

  if (!config.apiKey) {
    notices.push(
      'No static API key is set: scripts need --api-key, --api-key-file or COMFYUI_GATEWAY_API_KEY (or a user token). ' +
        'Everything but /health, /login and /register stays refused until someone signs in.',
    );
  }

  const gateway = createApp({
    config,
    logger,
    audit,
    upstream,
    chain: createCredentialChain(chainDeps),
    policy: createPolicy(config),
    clientIp,
    gates,
    routes,
    interceptors,
    enrichers,
    wsHooks: composeWsHooks(wsHooks),
    pingIntervalMs: opts.pingIntervalMs,
    isSecure: (req: IncomingMessage) => !!(req.socket as { encrypted?: boolean }).encrypted,
  });

  return {
    gateway,
    config,
    logger,
    audit,
    upstream,
    notices,
    async close() {
      for (const c of closers.reverse()) await c();
      logger.flush?.();
    },
  };
}

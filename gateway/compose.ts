import { createApp, type Gateway, type Gate, type Interceptor, type RouteMount } from './app';
import { createAudit, type Audit, type AuditEvent } from './audit';
import { createCredentialChain, type CredentialChainDeps } from './auth/chain';
import type { ResolvedConfig } from './config/load';
import { createLogger, type Logger } from './log';
import { createMetrics } from './metrics';
import { createClientIp } from './net/clientIp';
// the edge: IP lists, brute force, TLS, loopback, Cloudflare Access (issue 4)
import { createCloudflareAccess } from './cloudflare';
import { createBruteForce } from './net/bruteForce';
import { createIpLists } from './net/ipLists';
import { syncIpLists } from './net/ipListsSync';
import { createIsLocal, createLoopbackPrincipal } from './net/loopback';
import { createHttpsUpgradeGate, createPreflight } from './net/transport';
import { edgeRoutes, securityHeaders } from './routes/edge';
import { createInjectInterceptor } from './proxy/inject';
import { buildRouter } from './http/served';
import { createUpstream, type Upstream } from './proxy/upstream';
import { composeWsHooks, type WsHooks } from './proxy/ws';
import { healthRoutes } from './routes/health';
import { pageStateRoutes } from './routes/pageState';
import { staticRoutes } from './routes/static';
// users, sessions, tokens (issue 3)
import { createJwtService, loadJwtSecret } from './auth/jwt';
import { createPasswords } from './auth/passwords';
import { createRevocations } from './auth/revocations';
import { createPasswordSlots } from './auth/passwordSlots';
import { getContext } from './http/context';
import { createApiTokenVerifier } from './auth/tokens';
import { createCredentialCache } from './auth/credentialCache';
import { accountRoutes } from './routes/account';
import { authRoutes } from './routes/auth';
import { userAdminRoutes } from './routes/users';
import { createSetup } from './users/setup';
import { openStores, sharedParts } from './store/compose';
import type { UserStore } from './users/types';
// server-side model downloads (issue 6)
import { createDownloads, createDownloadsOff } from './downloads';
import { shareDownloads } from './downloads/shared';
import { freshPrincipal } from './routes/body';
// multi-user isolation (issue 5)
import { createIsolation, configuredInputDir } from './proxy/isolation';
import { createComfyServer } from './proxy/comfyServer';
import { composeQueue, type ComposedQueue } from './queue/compose';
import type { GatewayQueue } from './queue';

/** Knobs for tests and the CLI that are not user configuration. */
export interface ComposeOptions {
  logger?: Logger;
  /** write logs to stdout (default true) */
  stdout?: boolean;
  /** human-readable stdout logs (main sets it when stdout is a terminal) */
  pretty?: boolean;
  pingIntervalMs?: number;
  /** environment for secrets such as the JWT key (default process.env) */
  env?: NodeJS.ProcessEnv;
}

/** A built gateway with its services, ready to be served by a node http(s) server. */
export interface Composed {
  gateway: Gateway;
  config: ResolvedConfig;
  logger: Logger;
  audit: Audit;
  upstream: Upstream;
  /** the user store (users_db.json) */
  users: UserStore;
  /** the gateway's own queue (held prompts, workers, limits, usage) */
  queue: GatewayQueue;
  /** lines main prints at start-up (how to set a key, setup codes) */
  notices: string[];
  /** flushes stores and stops background work */
  close(): Promise<void>;
}

/** Builds every store and service from the config and wires them into createApp (the one place that does). */
export async function composeGateway(config: ResolvedConfig, opts: ComposeOptions = {}): Promise<Composed> {
  const logger =
    opts.logger ?? createLogger({ levels: config.log_levels, file: config.paths.log, stdout: opts.stdout, pretty: opts.pretty });
  // The audit trail is written whatever log_levels says: an operator quietening the log must not lose it.
  let gatewayRef: Gateway | null = null;
  let queuedRef: ComposedQueue | null = null;
  const metrics = createMetrics({ openWebSockets: () => gatewayRef?.openWebSockets() ?? 0, logger });
  const audit = createAudit(
    logger.isLevelEnabled('info')
      ? logger
      : (opts.logger ?? createLogger({ levels: ['info'], file: config.paths.log, stdout: opts.stdout, pretty: opts.pretty })),
    5000,
    (e) => {
      metrics.event(e);
      auditSink?.(e);
    },
  );
  let auditSink: ((e: AuditEvent) => void) | null = null;
  const upstream = createUpstream(config.upstream, { headerTimeoutMs: (config.upstream_timeout_s ?? 300) * 1000 });
  const clientIp = createClientIp(config);
  const notices: string[] = [];
  const closers: (() => Promise<void> | void)[] = [() => upstream.close(), () => metrics.close()];
  // A malformed list line stops start-up here with a ConfigError naming file:line (main prints it, exits 2).
  const localIpLists = createIpLists({ paths: config.paths, logger, audit });
  closers.push(() => localIpLists.close());
  // Users, sessions and personal tokens: the store, the JWT key, and the verifiers the chain calls.
  // "A credential was invalidated" (logout, token revoked, password change, disable, deletion): the store emits,
  // the WebSocket relay closes what was opened with it.
  const revocations = createRevocations((err, e) => logger.error({ err, event: e.kind }, 'a credential-invalidation listener failed'));
  // The records (users, tokens, ledger…): files in data_dir, or PostgreSQL shared by several replicas (issue 13).
  const stores = await openStores({ config, logger, revocations, env: opts.env ?? process.env }).catch(async (e: unknown) => {
    for (const c of closers.reverse()) await c();
    throw e;
  });
  const users = stores.users;
  closers.push(() => stores.close());
  const shared = stores.shared ? await sharedParts(stores.shared, logger) : null;
  if (shared) auditSink = shared.audit;
  // With Redis, a list change made through one replica reaches every other's files.
  const ipLists = stores.redis ? syncIpLists(localIpLists, { redis: stores.redis, logger }) : localIpLists;
  const bruteForce = createBruteForce({ config, audit, ipLists, logger, state: stores.bruteForceState });
  closers.push(() => bruteForce.close());
  const jwtSecret = await loadJwtSecret({
    env: opts.env ?? process.env,
    envName: config.secret_key_env,
    dataDir: config.paths.dataDir,
    shared: stores.shared,
  });
  if (jwtSecret.warning) notices.push(jwtSecret.warning);
  const jwt = createJwtService({ key: jwtSecret.key, store: users, expiryHours: config.access_token_expiration_hours });
  const passwords = createPasswords(config.bcrypt_cost);
  closers.push(() => passwords.close());
  // A burst of guesses is refused (429) beyond a few checks in flight per client, before anything is hashed.
  const passwordSlots = createPasswordSlots({ clientIp: (req) => getContext(req).clientIp });
  const setup = createSetup(users, shared?.setupCode);
  const setupNotice = setup.notice();
  if (setupNotice) notices.push(setupNotice);

  // "From this machine itself": first-run registration without the code, allow_loopback_without_auth.
  const isLocal = createIsLocal(clientIp);
  // Verified sessions and tokens are remembered for 2 s while the user store is unchanged (revocation is immediate).
  const credentialCache = createCredentialCache({ generation: () => users.generation() });
  const chainDeps: CredentialChainDeps = {
    apiKey: config.apiKey,
    cookieName: config.cookie.name,
    verifyJwt: credentialCache.jwt((token, source) => jwt.verify(token, source)),
    verifyApiToken: credentialCache.token(createApiTokenVerifier(users)),
    onInvalid: (req, kind) => bruteForce.onInvalidCredential(req, kind),
    loopbackPrincipal: createLoopbackPrincipal({ config, users, logger, isLocal }),
  };
  const cfAccess = config.cloudflare_access ? createCloudflareAccess({ config, users, logger, audit }) : null;
  if (cfAccess) {
    // The email an identity binds to is stored on the account: a deleted account's goes with it.
    chainDeps.verifyCfAccess = (assertion) => cfAccess.verify(assertion);
  }
  // Routes that read a body ask the chain again once it has arrived (routes/body.ts freshPrincipal).
  const chain = createCredentialChain(chainDeps);
  // IP lists first: a refused address gets 403 before anything else is looked at.
  const gates: Gate[] = [ipLists.gate, createHttpsUpgradeGate({ config }), ...(cfAccess ? [cfAccess.gate] : []), bruteForce.gate];
  const routes: RouteMount[] = [
    securityHeaders(),
    staticRoutes(),
    healthRoutes({ upstream, workers: () => queuedRef?.health() }),
    edgeRoutes({ ipLists, audit, chain }),
  ];
  if (config.metrics.enabled) routes.push(metrics.routes);
  if (config.metrics.port !== null) await metrics.listen(config.metrics.port);
  routes.push(
    authRoutes({
      config,
      store: users,
      passwords,
      jwt,
      setup,
      audit,
      logger,
      upstream,
      limiter: bruteForce,
      isLocal,
      chain,
      slots: passwordSlots,
    }),
    accountRoutes({ config, store: users, passwords, jwt, audit, chain, limiter: bruteForce, slots: passwordSlots }),
    pageStateRoutes({ setupPending: () => setup.pending() }),
  );
  const interceptors: Interceptor[] = [];
  interceptors.push(createInjectInterceptor({ upstream, cookieName: config.cookie.name }));
  const enrichers: Gate[] = [];
  const wsHooks: WsHooks[] = [];
  // Multi-user isolation (issue 5): comfy-user binding, per-user files/queue/history, the isolating WS relay.
  // Its WS hooks go first: later hooks must only ever see frames this user may see.
  // Know the server (version, multi-user, input folder, prompt ids) before the first request, and again on reconnect.
  const comfyServer = createComfyServer({ upstream, logger, upstreamUrl: config.upstream, configuredInputDir: configuredInputDir(config) });
  closers.push(() => comfyServer.close());
  await comfyServer.learn();
  // The gateway's own queue (issue 12): held prompts, fair release, limits, usage, workers.
  const queued = (queuedRef = await composeQueue({ config, logger, upstream, keys: users.accounts, users, chain, shared: stores.shared }));
  closers.push(() => queued.close());
  routes.push(queued.routes);
  // bench/queue.ts's control group (same isolation, prompts straight to ComfyUI); loud: limits and quotas go too.
  const bypassQueue = (opts.env ?? process.env).COMFYUI_GATEWAY_BENCH_BYPASS_QUEUE === '1';
  if (bypassQueue) logger.warn('COMFYUI_GATEWAY_BENCH_BYPASS_QUEUE=1: the gateway queue, its limits and quotas are OFF');
  const isolation = createIsolation({
    config,
    logger,
    audit,
    upstream,
    server: comfyServer,
    keys: users.accounts,
    shared: shared?.isolation,
    queue: bypassQueue ? undefined : queued.queue,
  });
  // A deleted account's folders leave its name at once (kept for admins or removed), however it was removed.
  users.onRemoved((name, accountId) => isolation.folders.retire(name, accountId));
  enrichers.push(...isolation.enrichers);
  interceptors.push(...isolation.interceptors);
  wsHooks.unshift(isolation.wsHooks, queued.queue.wsHooks);
  closers.push(() => isolation.close());
  routes.push(userAdminRoutes({ store: users, passwords, audit, chain, folders: isolation.folders }));
  // Each gateway user gets its ComfyUI user when it is created (first use covers users made before this ran).
  users.onCreated((u) => {
    isolation
      .ensureComfyUser(u.username)
      .catch((e) =>
        logger.warn({ err: (e as Error).message, user: u.username }, 'could not create the ComfyUI user yet; will retry on first use'),
      );
  });
  // ComfyUI's server-side model-download API, served here behind the gateway's identity (issue 6).
  if (config.model_downloads.enabled) {
    const downloads = createDownloads({
      config,
      logger,
      audit,
      upstream,
      recheck: freshPrincipal(chain),
      keys: users.accounts,
      tokenPersistence: shared?.hfTokens,
      roots: shared?.roots,
      replicas: stores.redis ? shareDownloads({ redis: stores.redis, logger }) : undefined,
    });
    await downloads.start();
    routes.push(downloads.routes);
    interceptors.push(...downloads.interceptors);
    enrichers.push(...downloads.enrichers);
    wsHooks.push(downloads.wsHooks);
    closers.push(() => downloads.close());
    // A HuggingFace token belongs to the person: a later user of the same name must not inherit it.
    users.onRemoved((_name, _id, key) => downloads.forgetUser(key));
  } else {
    const off = createDownloadsOff({ upstream, cookieName: config.cookie.name });
    interceptors.push(...off.interceptors);
    wsHooks.push(off.wsHooks);
  }

  if (!config.apiKey) {
    notices.push(
      'No static API key is set: scripts need --api-key, --api-key-file or COMFYUI_GATEWAY_API_KEY (or a user token). ' +
        'Everything but /health, /login and /register stays refused until someone signs in.',
    );
  }

  // The one router: core rows plus every feature's specs (the routes it serves, the ComfyUI routes it intercepts).
  const router = buildRouter(config, routes, interceptors);
  const gateway = createApp({
    config,
    logger,
    audit,
    upstream,
    chain,
    policy: router.policy,
    clientIp,
    gates,
    gatewayMiddleware: router.middleware,
    enrichers,
    wsHooks: composeWsHooks(wsHooks),
    revocations,
    pingIntervalMs: opts.pingIntervalMs,
    // HTTPS = TLS socket, or a trusted proxy's X-Forwarded-Proto (never an untrusted client's header).
    isSecure: clientIp.isSecure,
    originalHost: clientIp.originalHost,
    preflight: createPreflight({ config, clientIp, ipLists }),
    observe: metrics.observe,
    workerSockets: (pathAndQuery, headers, deliver) => queued.queue.workers.openSockets(pathAndQuery, headers, deliver),
  });
  gatewayRef = gateway;

  return {
    gateway,
    config,
    logger,
    audit,
    upstream,
    users,
    queue: queued.queue,
    notices,
    async close() {
      for (const c of closers.reverse()) await c();
      logger.flush?.();
    },
  };
}

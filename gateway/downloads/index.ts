import fs from 'node:fs';
import path from 'node:path';
import type { Gate, Interceptor, RouteMount } from '../app';
import type { Audit } from '../audit';
import type { ResolvedConfig } from '../config/load';
import type { Logger } from '../log';
import { canonicalize } from '../proxy/canonical';
import type { Upstream } from '../proxy/upstream';
import type { WsHooks } from '../proxy/ws';
import type { EligibilityConfig } from './access';
import { featuresInterceptor, featuresWsHooks, loopbackMarker } from './features';
import { createModelFolders } from './folders';
import { createHfApi } from './hfApi';
import { createHostPolicy } from './hosts';
import { createDownloadManager } from './manager';
import type { shareDownloads } from './shared';
import { createHfOAuth } from './oauth';
import { createProber } from './probe';
import { downloadRoutes } from './routes';
import { createSafeHttp, type Resolver } from './safeHttp';
import { createTokenStore, keyedTokenStore, type TokenPersistence } from './tokens';
import type { AccountKeys } from '../users/types';
import { fileRoots, type RootsPersistence } from './roots';

/** What the download subsystem needs from the gateway; the optional hooks exist for tests. */
export interface DownloadsDeps {
  config: ResolvedConfig;
  /** account keys: HuggingFace tokens are kept per account, not per name */
  keys?: AccountKeys;
  logger: Logger;
  audit: Audit;
  upstream: Upstream;
  /** DNS override for model hosts (tests: a name that resolves to a private address) */
  resolver?: Resolver;
  /** fetch used for the HuggingFace API (auth-check, OAuth token, whoami) */
  fetchImpl?: typeof fetch;
  /** free bytes on the filesystem holding `dir` (tests: simulate a full disk) */
  freeSpace?: (dir: string) => Promise<number>;
  /** how long a HuggingFace login waits for its callback (default 5 minutes) */
  oauthTimeoutMs?: number;
  /** re-checks the caller after a state-changing body has arrived (compose passes the credential chain's) */
  recheck?: import('express').RequestHandler;
  /** HF tokens in the replicas' shared store (encrypted) instead of data_dir/hf_tokens */
  tokenPersistence?: TokenPersistence;
  /** download single-flight and cancellation across replicas (Redis) */
  replicas?: ReturnType<typeof shareDownloads>;
  /** the learned model roots in the replicas' shared store instead of data_dir/model_download_roots.json */
  roots?: RootsPersistence;
}

/** The subsystem as compose.ts wires it. */
export interface Downloads {
  routes: RouteMount;
  interceptors: Interceptor[];
  wsHooks: WsHooks;
  /** run after authentication: remembers where a WebSocket's browser is, for its feature_flags reply */
  enrichers: Gate[];
  /** drops everything held for a deleted account, by its account key (their HuggingFace token) */
  forgetUser(key: string): void;
  /** sweeps orphaned partial downloads */
  start(): Promise<void>;
  /** cancels running downloads (their temp files are removed) and closes the login callback server */
  close(): Promise<void>;
}

async function statfsFree(dir: string): Promise<number> {
  const s = await fs.promises.statfs(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/** ComfyUI's server-side model-download API, served by the gateway behind its identity (DESIGN §8). */
export function createDownloads(deps: DownloadsDeps): Downloads {
  const { config, logger, audit, upstream } = deps;
  const md = config.model_downloads;
  const swept = new Set<string>();
  const hosts = createHostPolicy({ allowedHosts: md.allowed_hosts, redirectHosts: md.redirect_hosts, hfEndpoint: config.hfEndpoint });
  const http = createSafeHttp({ hosts, resolver: deps.resolver });
  const hfApi = createHfApi({ endpoint: config.hfEndpoint, fetchImpl: deps.fetchImpl });
  const byKey = createTokenStore({
    dir: path.join(config.paths.dataDir, 'hf_tokens'),
    hfApi,
    clientId: config.hf_oauth.client_id,
    logger,
    persistence: deps.tokenPersistence,
  });
  const tokens = keyedTokenStore(byKey, (user) => deps.keys?.keyOf(user) ?? user);
  // Roots learned from ComfyUI are remembered, so the next start can sweep orphans without asking ComfyUI.
  const roots = deps.roots ?? fileRoots(path.join(config.paths.dataDir, 'model_download_roots.json'), logger);
  const folders = createModelFolders({
    config,
    upstream,
    logger,
    onLearned: (map) => {
      const learned = [...new Set([...map.values()].flat())].sort();
      void sweepNew(learned);
      roots.save(learned);
    },
  });
  const prober = createProber({ hosts, http, hf: hfApi, logger });
  const freeSpace = deps.freeSpace ?? statfsFree;
  const local = createDownloadManager({
    http,
    maxConcurrent: md.max_concurrent,
    logger,
    audit,
    freeSpace,
    hfToken: (u) => tokens.valid(u),
    claim: deps.replicas?.claim,
  });
  // Several replicas: one downloads each model; all see and may cancel it (downloads/shared.ts).
  const manager = deps.replicas ? deps.replicas.wrap(local) : local;
  const oauth = createHfOAuth({
    clientId: config.hf_oauth.client_id,
    callbackPort: config.hf_oauth.callback_port,
    redirectUri: config.hf_oauth.redirect_uri,
    hfApi,
    tokens,
    logger,
    audit,
    timeoutMs: deps.oauthTimeoutMs,
  });
  const eligibility: EligibilityConfig = {
    allowedRoles: md.allowed_roles,
    clientId: config.hf_oauth.client_id,
    redirectUri: config.hf_oauth.redirect_uri,
  };
  if (config.hf_oauth.redirect_uri) {
    const p = canonicalize(new URL(config.hf_oauth.redirect_uri).pathname).path.toLowerCase();
    if (p !== '/auth/huggingface/callback')
      logger.warn('hf_oauth.redirect_uri should end in /api/auth/huggingface/callback on this gateway, or the login cannot complete');
  }

  async function sweepNew(dirs: string[]): Promise<void> {
    const fresh = dirs.filter((d) => !swept.has(d));
    fresh.forEach((d) => swept.add(d));
    if (fresh.length) await manager.sweep(fresh);
  }

  return {
    routes: downloadRoutes({
      eligibility,
      folders,
      hosts,
      prober,
      manager,
      tokens,
      oauth,
      hfApi,
      audit,
      freeSpace,
      sweepNew,
      recheck: deps.recheck,
    }),
    interceptors: [featuresInterceptor({ upstream, eligibility, cookieName: config.cookie.name })],
    wsHooks: featuresWsHooks(eligibility),
    enrichers: [loopbackMarker()],
    forgetUser(key) {
      byKey.remove(key);
    },
    async start() {
      // Partial files of a previous run (crash, kill -9) never became models; remove them before anything runs.
      // Without configured folders, the roots the previous run learned are used: start-up never calls ComfyUI.
      await sweepNew(folders.configured ? [...(await folders.get()).values()].flat() : await roots.load());
    },
    async close() {
      await oauth.close();
      await manager.close();
      http.close();
    },
  };
}

/**
 * With model_downloads switched off the routes are gone, so the frontend must not be told they exist: ComfyUI's
 * `/features` and `feature_flags` answers get both flags set to false.
 */
export function createDownloadsOff(deps: { upstream: Upstream; cookieName: string }): { interceptors: Interceptor[]; wsHooks: WsHooks } {
  const eligibility = { enabled: false, allowedRoles: [], clientId: null, redirectUri: null };
  return {
    interceptors: [featuresInterceptor({ upstream: deps.upstream, eligibility, cookieName: deps.cookieName })],
    wsHooks: featuresWsHooks(eligibility),
  };
}

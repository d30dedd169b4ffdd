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
import { createHfOAuth } from './oauth';
import { createProber } from './probe';
import { downloadRoutes } from './routes';
import { createSafeHttp, type Resolver } from './safeHttp';
import { createTokenStore } from './tokens';

/** What the download subsystem needs from the gateway; the optional hooks exist for tests. */
export interface DownloadsDeps {
  config: ResolvedConfig;
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
}

/** The subsystem as compose.ts wires it. */
export interface Downloads {
  routes: RouteMount;
  interceptors: Interceptor[];
  wsHooks: WsHooks;
  /** run after authentication: remembers where a WebSocket's browser is, for its feature_flags reply */
  enrichers: Gate[];
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
  const hosts = createHostPolicy({ allowedHosts: md.allowed_hosts, redirectHosts: md.redirect_hosts, hfEndpoint: config.hfEndpoint });
  const http = createSafeHttp({ hosts, resolver: deps.resolver });
  const hfApi = createHfApi({ endpoint: config.hfEndpoint, fetchImpl: deps.fetchImpl });
  const tokens = createTokenStore({ dir: path.join(config.paths.dataDir, 'hf_tokens'), hfApi, clientId: config.hf_oauth.client_id, logger });
  const folders = createModelFolders({ config, upstream, logger });
  const prober = createProber({ hosts, http, hf: hfApi, logger });
  const freeSpace = deps.freeSpace ?? statfsFree;
  const manager = createDownloadManager({ http, maxConcurrent: md.max_concurrent, logger, audit, freeSpace, hfToken: (u) => tokens.valid(u) });
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

  const swept = new Set<string>();
  async function sweepNew(dirs: string[]): Promise<void> {
    const fresh = dirs.filter((d) => !swept.has(d));
    fresh.forEach((d) => swept.add(d));
    if (fresh.length) await manager.sweep(fresh);
  }

  return {
    routes: downloadRoutes({ eligibility, folders, hosts, prober, manager, tokens, oauth, hfApi, audit, freeSpace, sweepNew }),
    interceptors: [featuresInterceptor({ upstream, eligibility })],
    wsHooks: featuresWsHooks(eligibility),
    enrichers: [loopbackMarker()],
    async start() {
      // Partial files of a previous run (crash, kill -9) never became models; remove them before anything runs.
      const map = await folders.get();
      await sweepNew([...map.values()].flat());
    },
    async close() {
      await oauth.close();
      await manager.close();
      http.close();
    },
  };
}

import fs from 'node:fs';
import path from 'node:path';
import express from 'express';
import type { RouteMount } from '../app';
import type { Audit } from '../audit';
import type { Principal } from '../auth/principal';
import { getContext } from '../http/context';
import { isDirectLoopback } from '../net/clientIp';
import { isEligibleRequest, mayDownload, type EligibilityConfig } from './access';
import { jsonBody, parseCancelBody, parseModelsBody } from './body';
import { dlErrors } from './errors';
import type { ModelFolders } from './folders';
import type { HfApi } from './hfApi';
import type { HostPolicy } from './hosts';
import type { DownloadManager, NewSession } from './manager';
import { sendCallbackPage, type HfOAuth } from './oauth';
import type { Prober, ProbeResult } from './probe';
import type { TokenStore } from './tokens';

/** Everything the six routes (and the gateway-routed OAuth callback) use. */
export interface RouteDeps {
  eligibility: EligibilityConfig;
  folders: ModelFolders;
  hosts: HostPolicy;
  prober: Prober;
  manager: DownloadManager;
  tokens: TokenStore;
  oauth: HfOAuth;
  hfApi: HfApi;
  audit: Audit;
  freeSpace(dir: string): Promise<number>;
  /** sweeps orphaned temp files in directories not yet swept in this process */
  sweepNew(dirs: string[]): Promise<void>;
  /** re-checks the caller once the body has arrived (a held-back body must not outlive a revocation) */
  recheck?: express.RequestHandler;
}

type Entry = {
  state: 'available' | 'missing' | 'downloading';
  progress: { bytes_downloaded: number; total_bytes: number | null; progress: number | null } | null;
  file_size: number | null;
  is_hf_downloadable: boolean | null;
  last_error?: { code: string; message: string };
};

const WHOAMI_TTL_MS = 60_000;

function caller(req: express.Request): Principal {
  return getContext(req).principal!;
}

function userAgent(req: express.Request): string | undefined {
  return typeof req.headers['user-agent'] === 'string' ? req.headers['user-agent'].slice(0, 200) : undefined;
}

/** Free bytes where `dir` is, or where it will be created (its nearest existing ancestor). */
async function existingAncestor(dir: string): Promise<string> {
  let d = dir;
  for (;;) {
    try {
      await fs.promises.stat(d);
      return d;
    } catch {
      const up = path.dirname(d);
      if (up === d) return d;
      d = up;
    }
  }
}

/** Mounts the routes at their canonical paths (the front door strips `/api`). */
export function downloadRoutes(d: RouteDeps): RouteMount {
  const raw = express.raw({ type: () => true, limit: '1mb' });
  const whoamiCache = new Map<string, { name: string | null; at: number }>();

  const requireDownloader: express.RequestHandler = (req, _res, next) => {
    next(mayDownload(caller(req), d.eligibility.allowedRoles) ? undefined : dlErrors.forbidden());
  };

  const send = (res: express.Response, status: number, body: unknown) => {
    res.status(status).set('Cache-Control', 'no-store').json(body);
  };

  async function statusEntry(id: string, probe: ProbeResult): Promise<Entry> {
    const base = { file_size: probe.file_size, is_hf_downloadable: probe.is_hf_downloadable };
    const parsed = await d.folders.parse(id);
    // An ill-formed id is reported missing, not an error: the workflow author probably typo'd it.
    if (typeof parsed === 'string') return { state: 'missing', progress: null, ...base };
    const s = d.manager.get(id);
    if (s) {
      const progress = s.total ? Math.min(1, s.bytes / s.total) : null;
      return {
        state: 'downloading',
        progress: { bytes_downloaded: s.bytes, total_bytes: s.total, progress },
        ...base,
        file_size: base.file_size ?? s.total,
      };
    }
    if (await d.folders.existing(parsed)) return { state: 'available', progress: null, ...base };
    const e: Entry = { state: 'missing', progress: null, ...base };
    const last = d.manager.lastError(id);
    if (last) e.last_error = last;
    return e;
  }

  const afterBody: express.RequestHandler[] = d.recheck ? [d.recheck, requireDownloader] : [];

  return (app) => {
    // Case-insensitive and trailing-slash tolerant like every gateway route (http/served.ts builds the routers).
    const r = app;

    r.post('/models-availability-status', raw, async (req, res) => {
      const p = caller(req);
      const models = parseModelsBody(jsonBody(req));
      const token = models.size ? await d.tokens.valid(p.username) : null;
      const who = { user: p.username, token };
      const pairs = await Promise.all(
        [...models].map(async ([id, src]) => [id, await statusEntry(id, await d.prober.probe(src.url, who))] as const),
      );
      const out: Record<string, Entry> = Object.create(null);
      for (const [id, e] of pairs) Object.defineProperty(out, id, { value: e, enumerable: true, writable: true, configurable: true });
      send(res, 200, {
        models: out,
        hf_auth: { token_available: d.tokens.has(p.username), eligible: isEligibleRequest(req, p, d.eligibility) },
      });
    });

    r.post('/download-models', requireDownloader, raw, ...afterBody, async (req, res) => {
      const p = caller(req);
      const ctx = getContext(req);
      const models = parseModelsBody(jsonBody(req));
      if (models.size === 0) throw dlErrors.emptyRequest();
      if (!(await d.folders.known())) throw dlErrors.foldersUnknown();
      // Every precondition for every model first: any failure refuses the whole request and schedules nothing.
      const plan: (NewSession & { dir: string })[] = [];
      for (const [id, src] of models) {
        const parsed = await d.folders.parse(id);
        if (typeof parsed === 'string') throw dlErrors.invalidModelId(id, parsed);
        const check = d.hosts.checkInitial(src.url);
        if (!check.ok) throw dlErrors.urlNotAllowed(id, src.url, check.reason);
        const dest = await d.folders.destination(parsed);
        if (!dest) throw dlErrors.invalidModelId(id, `no directory is registered for folder ${JSON.stringify(parsed.folder)}`);
        if (await d.folders.existing(parsed)) throw dlErrors.alreadyAvailable(id);
        if (d.manager.get(id)) throw dlErrors.alreadyDownloading(id);
        plan.push({ modelId: id, url: src.url, dest, sha256: src.sha256, sizeHint: null, dir: path.dirname(dest) });
      }
      // The only checks that touch the network come last; downloadability is judged with the caller's own token.
      const token = await d.tokens.valid(p.username);
      const probes = await Promise.all(plan.map((n) => d.prober.probe(n.url, { user: p.username, token })));
      plan.forEach((n, i) => {
        if (probes[i].blocked) throw dlErrors.urlNotAllowed(n.modelId, n.url, probes[i].blocked!);
        if (probes[i].is_hf_downloadable === false) throw dlErrors.notDownloadable(n.modelId, n.url);
        n.sizeHint = probes[i].file_size;
      });
      // Disk space per filesystem: this request's known sizes plus what running downloads still need there.
      const byDev = new Map<number, { dir: string; need: number; first: string }>();
      for (const n of plan) {
        if (n.sizeHint === null) continue;
        const anc = await existingAncestor(n.dir);
        const dev = (await fs.promises.stat(anc)).dev;
        const g = byDev.get(dev) ?? { dir: anc, need: 0, first: n.modelId };
        g.need += n.sizeHint;
        byDev.set(dev, g);
      }
      for (const [dev, g] of byDev) {
        const need = g.need + (await d.manager.pendingBytesOn(dev));
        const free = await d.freeSpace(g.dir);
        if (need > free) throw dlErrors.insufficientStorage(g.first, need, free);
      }
      await d.sweepNew([...new Set(plan.map((n) => n.dir))]);
      const conflict = d.manager.schedule(plan, { user: p.username, ip: ctx.clientIp });
      if (conflict) throw dlErrors.alreadyDownloading(conflict);
      send(res, 202, { accepted: true, scheduled: plan.map((n) => n.modelId) });
    });

    r.post('/cancel-model-download-session', requireDownloader, raw, ...afterBody, async (req, res) => {
      const p = caller(req);
      const id = parseCancelBody(jsonBody(req));
      const parsed = await d.folders.parse(id);
      if (typeof parsed === 'string') throw dlErrors.invalidModelId(id, parsed);
      // A download is cancelled by whoever started it, or an admin: otherwise any downloader could stop everyone else's.
      const s = d.manager.get(id);
      if (!s) throw dlErrors.notDownloading(id);
      if (s.user !== p.username && p.role !== 'admin') throw dlErrors.notYourDownload(id);
      d.manager.cancel(id, { user: p.username, ip: getContext(req).clientIp });
      send(res, 200, { cancelled: true });
    });

    r.get('/hf-auth-token-status', async (req, res) => {
      const p = caller(req);
      const available = d.tokens.has(p.username);
      let username: string | null = null;
      if (available) {
        const token = await d.tokens.valid(p.username);
        if (token) {
          const hit = whoamiCache.get(p.username);
          if (hit && Date.now() - hit.at < WHOAMI_TTL_MS) username = hit.name;
          else {
            username = await d.hfApi.whoami(token);
            if (whoamiCache.size > 10_000) whoamiCache.clear();
            whoamiCache.set(p.username, { name: username, at: Date.now() });
            if (username) d.tokens.setHfUsername(p.username, username);
          }
        }
        username ??= d.tokens.hfUsername(p.username);
      }
      send(res, 200, { token_available: available, username });
    });

    r.post('/hf-auth-login-start', async (req, res) => {
      const p = caller(req);
      const ctx = getContext(req);
      if (!mayDownload(p, d.eligibility.allowedRoles)) throw dlErrors.hfNotEligible();
      if (!d.eligibility.clientId) throw dlErrors.hfNotConfigured();
      if (!d.eligibility.redirectUri && !isDirectLoopback(req)) throw dlErrors.hfNotEligible();
      whoamiCache.delete(p.username);
      const url = await d.oauth.start(p.username, ctx.clientIp);
      send(res, 200, { authorize_url: url });
    });

    r.post('/hf-auth-logout', async (req, res) => {
      const p = caller(req);
      const had = d.tokens.remove(p.username);
      d.prober.forgetUser(p.username);
      whoamiCache.delete(p.username);
      if (had) d.audit.record({ event: 'hf_auth_logout', user: p.username, ip: getContext(req).clientIp, user_agent: userAgent(req) });
      send(res, 200, { logged_out: true });
    });

    // The OAuth callback through the gateway (hf_oauth.redirect_uri); the front door already required a session.
    r.get('/auth/huggingface/callback', async (req, res, next) => {
      if (!d.eligibility.redirectUri) return next();
      const p = caller(req);
      const result = await d.oauth.gatewayCallback(p.username, getContext(req).query);
      d.prober.forgetUser(p.username);
      whoamiCache.delete(p.username);
      sendCallbackPage(res, result, false);
    });

    const known = [
      '/models-availability-status',
      '/download-models',
      '/cancel-model-download-session',
      '/hf-auth-token-status',
      '/hf-auth-login-start',
      '/hf-auth-logout',
    ];
    r.all(known, () => {
      throw dlErrors.methodNotAllowed();
    });
  };
}

import dns from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import { DownloadFailure } from './errors';
import { isPublicAddress, type HostPolicy, type HostRule } from './hosts';

/** DNS resolution, injectable for tests (a name that "resolves" to a private address). */
export type Resolver = (hostname: string) => Promise<{ address: string; family: number }[]>;

/** One outbound request's options. */
export interface SafeRequestOptions {
  method: 'GET' | 'HEAD';
  /** the caller's HuggingFace token: attached only on hops to HF hosts, never to a CDN */
  hfToken?: string | null;
  headers?: Record<string, string>;
  /** follow allow-listed redirects (each hop re-checked); false returns the first 3xx as is */
  follow: boolean;
  signal?: AbortSignal;
  /** socket idle timeout */
  timeoutMs?: number;
}

/** The final response plus the headers of the first hop (HF puts X-Linked-Size / X-Linked-Etag on its 302). */
export interface SafeResponse {
  res: http.IncomingMessage;
  url: URL;
  first: http.IncomingHttpHeaders;
}

const MAX_REDIRECTS = 5;

/** Refused before any connection: not allow-listed, userinfo, private address, too many redirects. */
export class BlockedError extends DownloadFailure {
  constructor(reason: string) {
    super('URL_NOT_ALLOWED', reason, false);
    this.name = 'BlockedError';
  }
}

/** The outbound HTTP client for model URLs: allow-list on every hop, private addresses refused at DNS time. */
export interface SafeHttp {
  request(raw: string, opts: SafeRequestOptions): Promise<SafeResponse>;
  close(): void;
}

/** Builds the client. `resolver` overrides DNS (tests); connections always go to the address that was checked. */
export function createSafeHttp(deps: { hosts: HostPolicy; resolver?: Resolver; userAgent?: string }): SafeHttp {
  const resolve: Resolver = deps.resolver ?? ((h) => dns.promises.lookup(h, { all: true, verbatim: true }));
  const agents = {
    http: new http.Agent({ keepAlive: true, maxSockets: 32, timeout: 60_000 }),
    https: new https.Agent({ keepAlive: true, maxSockets: 32, timeout: 60_000 }),
  };

  /** A lookup that refuses names resolving to non-public addresses unless the matched rule explicitly allows it. */
  function guardedLookup(rule: HostRule): LookupFunction {
    return ((hostname: string, options: dns.LookupOptions, cb: (...a: unknown[]) => void) => {
      resolve(hostname).then(
        (all) => {
          const family = options?.family === 4 || options?.family === 6 ? options.family : 0;
          const list = family ? all.filter((a) => a.family === family) : all;
          if (!list.length) return cb(Object.assign(new Error(`${hostname} did not resolve`), { code: 'ENOTFOUND' }));
          // Any non-public answer refuses the name: a mixed answer is how rebinding attacks look.
          if (!rule.allowPrivate && list.some((a) => !isPublicAddress(a.address)))
            return cb(new BlockedError(`${hostname} resolves to a private, loopback or link-local address`));
          if (options?.all) cb(null, list);
          else cb(null, list[0].address, list[0].family);
        },
        (err) => cb(err),
      );
    }) as LookupFunction;
  }

  function once(url: URL, rule: HostRule, opts: SafeRequestOptions): Promise<http.IncomingMessage> {
    return new Promise((resolvePromise, reject) => {
      const lib = url.protocol === 'https:' ? https : http;
      const headers: Record<string, string> = {
        'user-agent': deps.userAgent ?? 'comfyui-gateway',
        'accept-encoding': 'identity',
        ...opts.headers,
      };
      if (opts.hfToken && deps.hosts.isHf(url)) headers.authorization = `Bearer ${opts.hfToken}`;
      const req = lib.request(
        {
          protocol: url.protocol,
          hostname: url.hostname.replace(/^\[|\]$/g, ''),
          port: url.port || undefined,
          path: url.pathname + url.search,
          method: opts.method,
          headers,
          agent: url.protocol === 'https:' ? agents.https : agents.http,
          lookup: guardedLookup(rule),
          timeout: opts.timeoutMs ?? 30_000,
          signal: opts.signal,
        },
        resolvePromise,
      );
      req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
      req.on('error', reject);
      req.end();
    });
  }

  return {
    async request(raw, opts) {
      const first = deps.hosts.checkInitial(raw);
      if (!first.ok) throw new BlockedError(first.reason);
      let url = first.url;
      let rule = first.rule;
      let firstHeaders: http.IncomingHttpHeaders | null = null;
      for (let hop = 0; ; hop++) {
        const res = await once(url, rule, opts);
        firstHeaders ??= res.headers;
        const status = res.statusCode ?? 0;
        if (!opts.follow || status < 300 || status >= 400 || status === 304 || !res.headers.location)
          return { res, url, first: firstHeaders };
        res.resume();
        if (hop >= MAX_REDIRECTS) throw new BlockedError('too many redirects');
        let next: URL;
        try {
          next = new URL(res.headers.location, url);
        } catch {
          throw new BlockedError('malformed redirect');
        }
        const c = deps.hosts.checkRedirect(next);
        if (!c.ok) throw new BlockedError(`redirect refused: ${c.reason}`);
        if (url.protocol === 'https:' && next.protocol === 'http:') throw new BlockedError('redirect refused: https to http');
        url = c.url;
        rule = c.rule;
      }
    },
    close() {
      agents.http.destroy();
      agents.https.destroy();
    },
  };
}

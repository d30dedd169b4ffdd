import type { Gate, Interceptor } from '../app';
import type { Principal } from '../auth/principal';
import { isDirectLoopback } from '../net/clientIp';
import { headersForRead, upstreamUrl } from '../proxy/headers';
import { callUpstream, type Upstream } from '../proxy/upstream';
import type { WsHooks } from '../proxy/ws';
import { isEligible, type EligibilityConfig } from './access';

/** Remembers, on the principal of an admitted request, whether its socket was direct loopback (read by WS hooks). */
const DIRECT_LOOPBACK = Symbol('downloads.directLoopback');

type Marked = Principal & { [DIRECT_LOOPBACK]?: boolean };

/** The two flags the gateway adds to ComfyUI's feature flags, for one caller. */
export function gatewayFlags(p: Principal | null, directLoopback: boolean, c: EligibilityConfig): Record<string, boolean> {
  const on = c.enabled !== false;
  return { server_side_model_downloads: on, hf_auth_eligible: on && isEligible(p, directLoopback, c) };
}

/**
 * Records direct-loopback-ness on the request's principal. WebSocket sessions carry the principal but not the
 * request, and eligibility for the `feature_flags` reply depends on where the browser is.
 */
export function loopbackMarker(): Gate {
  return (req, ctx) => {
    if (ctx.principal) (ctx.principal as Marked)[DIRECT_LOOPBACK] = isDirectLoopback(req);
  };
}

/** GET /features (and /api/features): ComfyUI's answer with the gateway's flags merged in, per caller. */
export function featuresInterceptor(deps: { upstream: Upstream; eligibility: EligibilityConfig; cookieName: string }): Interceptor {
  return {
    id: 'downloads-features',
    routes: [{ path: '/features', methods: ['GET', 'HEAD'] }],
    async handle(req, res, ctx) {
      const r = await callUpstream(deps.upstream, 'GET', upstreamUrl(ctx), {
        ...headersForRead(req, ctx, { cookieName: deps.cookieName, upstreamOrigin: deps.upstream.origin }),
        accept: 'application/json',
      });
      let body: Buffer = r.body;
      let type = String(r.headers['content-type'] ?? 'application/json');
      if (r.status === 200) {
        try {
          const parsed: unknown = JSON.parse(r.body.toString('utf8'));
          if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
            const merged = {
              ...(parsed as Record<string, unknown>),
              ...gatewayFlags(ctx.principal, isDirectLoopback(req), deps.eligibility),
            };
            body = Buffer.from(JSON.stringify(merged));
            type = 'application/json; charset=utf-8';
          }
        } catch {
          /* not JSON: pass it through untouched */
        }
      }
      res.statusCode = r.status;
      res.setHeader('content-type', type);
      res.setHeader('content-length', body.length);
      res.setHeader('cache-control', 'no-store');
      res.setHeader('x-content-type-options', 'nosniff');
      res.end(req.method === 'HEAD' ? undefined : body);
    },
  };
}

/** Rewrites the upstream's `{"type":"feature_flags","data":{...}}` WebSocket reply with the session's flags. */
export function featuresWsHooks(eligibility: EligibilityConfig): WsHooks {
  return {
    fromUpstream(s, data, isBinary) {
      if (isBinary || data.length > 1 << 20 || data.indexOf('feature_flags') === -1) return data;
      let msg: { type?: unknown; data?: unknown };
      try {
        msg = JSON.parse(data.toString('utf8'));
      } catch {
        return data;
      }
      if (!msg || msg.type !== 'feature_flags' || !msg.data || typeof msg.data !== 'object' || Array.isArray(msg.data)) return data;
      const loop = (s.principal as Marked)[DIRECT_LOOPBACK] === true;
      return JSON.stringify({
        ...msg,
        data: { ...(msg.data as Record<string, unknown>), ...gatewayFlags(s.principal, loop, eligibility) },
      });
    },
  };
}

import type { Interceptor } from '../../app';
import type { IsolationContext } from './context';
import { stringifyJson } from './json';
import { callUpstream, isObj, parseJsonObject, readBody, sendUpstream, upstreamHeaders, upstreamUrl } from './http';

/** /internal/logs/subscribe names a WebSocket by clientId: map it to the caller's upstream id like the socket was. */
export function logsSubscribeInterceptor(iso: IsolationContext): Interceptor {
  return {
    id: 'isolation-logs-subscribe',
    routes: [{ path: '/internal/logs/subscribe' }],
    async handle(req, res, ctx) {
      const p = ctx.principal!;
      const body = parseJsonObject(await readBody(req, 64 * 1024));
      if (isObj(body) && typeof body.clientId === 'string' && body.clientId)
        body.clientId = iso.clientIds.upstreamFor(p.username, body.clientId);
      const headers = upstreamHeaders(req, ctx, iso.cookieName, iso.upstream);
      headers['content-type'] = 'application/json';
      sendUpstream(req, res, await callUpstream(iso.upstream, req.method ?? 'PATCH', upstreamUrl(ctx), headers, stringifyJson(body)));
    },
  };
}

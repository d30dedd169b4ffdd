import type { Interceptor } from '../../app';
import type { IsolationContext } from './context';
import { callUpstream, isObj, sendJson, sendUpstream, upstreamHeaders, upstreamJson, upstreamUrl } from './http';

/** GET /users: ComfyUI's user list reduced to the caller's own entry (everyone, admins included). */
export function usersInterceptor(iso: IsolationContext): Interceptor {
  return {
    id: 'isolation-users',
    routes: [{ path: '/users', methods: ['GET', 'HEAD'] }],
    async handle(req, res, ctx) {
      req.resume();
      const p = ctx.principal!;
      const up = await callUpstream(iso.upstream, 'GET', upstreamUrl(ctx), upstreamHeaders(req, ctx, iso.cookieName, iso.upstream));
      const j = upstreamJson(up);
      if (!isObj(j) || !isObj(j.users)) return sendUpstream(req, res, up);
      const own = p.comfyUser;
      const users = own && Object.prototype.hasOwnProperty.call(j.users, own) ? { [own]: j.users[own] } : {};
      sendJson(req, res, { ...j, users }, 200, up);
    },
  };
}

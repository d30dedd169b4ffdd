import type { RouteMount } from '../app';
import { getContext } from '../http/context';
import type { Upstream } from '../proxy/upstream';

/** GET /health: public up/down only; queue and devices for authenticated callers. */
export function healthRoutes(deps: { upstream: Upstream; workers?: () => unknown[] | undefined }): RouteMount {
  return (app) => {
    app.get('/health', async (req, res) => {
      const up = await deps.upstream.isUp();
      const body: Record<string, unknown> = { status: up ? 'ok' : 'degraded', upstream: up ? 'up' : 'down' };
      if (getContext(req).principal && up) {
        try {
          body.queue = ((await deps.upstream.json('GET', '/prompt')) as { exec_info?: unknown }).exec_info ?? null;
          if (getContext(req).principal?.role === 'admin')
            body.devices = ((await deps.upstream.json('GET', '/system_stats')) as { devices?: unknown }).devices ?? null;
        } catch {
          body.queue = null;
        }
      }
      // Each ComfyUI worker the gateway's queue releases prompts to (admins only), whether ComfyUI answers or not.
      if (getContext(req).principal?.role === 'admin' && deps.workers) body.workers = deps.workers() ?? [];
      res.set('Cache-Control', 'no-store').json(body);
    });
  };
}

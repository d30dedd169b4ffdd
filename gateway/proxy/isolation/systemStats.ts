import type { Interceptor } from '../../app';
import type { IsolationContext } from './context';
import { callUpstream, isObj, sendJson, sendUpstream, unexpectedAnswer, upstreamHeaders, upstreamJson, upstreamUrl } from './http';

/** What a non-admin may know of the machine: versions, OS, memory (no argv, no paths, nothing about other users). */
const SYSTEM_KEYS = [
  'os',
  'comfyui_version',
  'required_frontend_version',
  'installed_templates_version',
  'python_version',
  'pytorch_version',
  'embedded_python',
  'ram_total',
  'ram_free',
];
const DEVICE_KEYS = ['name', 'type', 'index', 'vram_total', 'vram_free', 'torch_vram_total', 'torch_vram_free'];

const pick = (o: Record<string, unknown>, keys: string[]) => Object.fromEntries(keys.filter((k) => k in o).map((k) => [k, o[k]]));

/** ComfyUI's /system_stats reduced to what every signed-in user may see (an allow-list: new fields stay hidden). */
export function redactSystemStats(stats: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (isObj(stats.system)) out.system = pick(stats.system, SYSTEM_KEYS);
  if (Array.isArray(stats.devices)) out.devices = stats.devices.filter(isObj).map((d) => pick(d, DEVICE_KEYS));
  return out;
}

/** GET /system_stats: admins get ComfyUI's answer as it is, everyone else the redacted copy. */
export function systemStatsInterceptor(iso: IsolationContext): Interceptor {
  return {
    id: 'system-stats',
    routes: [{ path: '/system_stats', methods: ['GET', 'HEAD'] }],
    async handle(req, res, ctx, forward) {
      if (ctx.principal?.role === 'admin') return forward();
      req.resume();
      const up = await callUpstream(iso.upstream, 'GET', upstreamUrl(ctx), upstreamHeaders(req, ctx, iso.cookieName, iso.upstream));
      const j = upstreamJson(up);
      if (!isObj(j)) {
        if (up.status === 200) throw unexpectedAnswer();
        return sendUpstream(req, res, up);
      }
      sendJson(req, res, redactSystemStats(j), 200, up);
    },
  };
}

import express from 'express';
import type { Interceptor, RouteMount } from '../app';
import { createPolicy, type Policy } from '../proxy/policy';
import { interceptSpecs, type FeatureSpec } from '../proxy/routeTable';

type Handlers = unknown[];
type Verb = 'get' | 'post' | 'put' | 'patch' | 'delete' | 'all' | 'use';

/** The gateway's own routes as route specs, plus the middleware every gateway-owned answer gets (security headers). */
export interface ServedRoutes {
  specs: FeatureSpec[];
  middleware: express.RequestHandler[];
}

/**
 * Runs each feature's route mount against a recorder instead of an Express app, and turns every path it
 * registers into one route spec whose `serve` is an Express router holding that path's handlers only. Express
 * stays the handler toolkit (body parsing, res helpers, :params) but routes nothing: the table does.
 */
export function collectRoutes(mounts: RouteMount[]): ServedRoutes {
  const middleware: express.RequestHandler[] = [];
  const paths = new Map<string, { path: string; prefix: boolean; methods: Set<string> | null; calls: [Verb, string, Handlers][] }>();
  const add = (verb: Verb, where: string | string[], handlers: Handlers) => {
    for (const path of Array.isArray(where) ? where : [where]) {
      if (path.includes('*') || path.includes('(') || path.includes('{')) throw new Error(`route ${path}: only plain paths and :params`);
      const key = `${verb === 'use' ? 'use ' : ''}${path.toLowerCase().replace(/\/+$/, '')}`;
      const e = paths.get(key) ?? { path, prefix: verb === 'use', methods: new Set<string>(), calls: [] };
      paths.set(key, e);
      if (verb === 'all' || verb === 'use') e.methods = null;
      else if (e.methods) e.methods.add(verb.toUpperCase()).add(verb === 'get' ? 'HEAD' : verb.toUpperCase());
      e.calls.push([verb, path, handlers]);
    }
  };
  const verb =
    (v: Verb) =>
    (where: string | string[], ...handlers: Handlers) =>
      add(v, where, handlers);
  const recorder = {
    get: verb('get'),
    post: verb('post'),
    put: verb('put'),
    patch: verb('patch'),
    delete: verb('delete'),
    all: verb('all'),
    use(...args: Handlers) {
      if (typeof args[0] === 'string' || Array.isArray(args[0])) add('use', args[0] as string, args.slice(1));
      else middleware.push(...(args.flat() as express.RequestHandler[]));
    },
  };
  for (const mount of mounts) mount(recorder as unknown as express.Express);
  const specs = [...paths.values()].map((e): FeatureSpec => {
    // Like Express: case-insensitive, trailing slash optional (the table lower-cases and drops it too).
    const router = express.Router() as unknown as Record<Verb, (...a: unknown[]) => void>;
    for (const [v, p, h] of e.calls) router[v](p, ...h);
    return {
      id: `${e.prefix ? 'serve-under' : 'serve'} ${e.path}`,
      prefix: e.path
        .toLowerCase()
        .split('/')
        .filter(Boolean)
        .map((s) => (s.startsWith(':') ? '*' : s)),
      exact: !e.prefix,
      // OPTIONS too: Express answers it with the path's Allow list, as it did before the table routed.
      ...(e.methods ? { methods: [...e.methods, 'OPTIONS'] } : {}),
      serve: router as unknown as FeatureSpec['serve'],
    };
  });
  return { specs, middleware };
}

/** The policy table with every feature's specs (served routes, intercepted ComfyUI routes), and the gateway middleware. */
export function buildRouter(
  opts: { manager_admin_only: boolean },
  mounts: RouteMount[],
  interceptors: Interceptor[],
): { policy: Policy; middleware: express.RequestHandler[] } {
  const served = collectRoutes(mounts);
  return { policy: createPolicy(opts, [...served.specs, ...interceptSpecs(interceptors)]), middleware: served.middleware };
}

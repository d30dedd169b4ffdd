import type { CanonicalRoute } from './canonical';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Interceptor } from '../app';
import { indexRules, mergeSpecs, type FeatureSpec } from './routeTable';

/** Who may call a route: anyone, any signed-in principal, or admins only. */
export type Access = 'public' | 'user' | 'admin';

/** One row of the policy table. */
export interface PolicyRule {
  /** stable name, for logs and tests */
  id: string;
  /** leading canonical segments (lower-cased); `*` matches any one segment */
  prefix: (string | RegExp)[];
  /** methods the row applies to; absent = all */
  methods?: string[];
  access: Access;
  /** gateway routes are served by the gateway's own Express app; comfy routes are proxied */
  owner: 'gateway' | 'comfy';
  /** exact: the route must have exactly `prefix.length` segments */
  exact?: boolean;
  /** only when the client used an `/api` twin (for routes ComfyUI serves differently with and without it) */
  apiOnly?: boolean;
  /** GET changes state here (ComfyUI-Manager: reboot, snapshot restore, channel and version switches) */
  getChangesState?: boolean;
  /** the core row whose access a feature's spec inherits (metrics label, CF Access exemption, session forms); default id */
  family?: string;
  /** the upgrade to a relayed WebSocket is allowed here (and only here) */
  websocket?: boolean;
  /** a gateway route's handler: Express is entered only through the spec decide() picked */
  serve?: ServeHandler;
  /** a ComfyUI route the gateway reads or rewrites (it may still forward) */
  intercept?: Interceptor;
}

/** The handler of a gateway-owned spec (an Express router holding exactly that spec's routes). */
export type ServeHandler = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void;

/** The decision for one request. */
export interface Decision {
  rule: PolicyRule;
  access: Access;
  /** a GET may change state on this route: the CSRF check guards reads from other sites too */
  getChangesState?: boolean;
}

/** ComfyUI-Manager's route families; `model` is its older `POST /model/install` (still shipped by forks). */
export const MANAGER_FAMILIES = ['manager', 'customnode', 'snapshot', 'externalmodel', 'comfyui_manager', 'model'];

const RANK: Record<Access, number> = { public: 0, user: 1, admin: 2 };

/**
 * Builds the single policy table keyed by canonical route (DESIGN §5–6): the core rows below plus the route specs
 * each feature contributes (gateway routes it serves, ComfyUI routes it intercepts). It is also the router:
 * the spec decide() returns says who answers.
 */
export function createPolicy(opts: { manager_admin_only: boolean }, specs: FeatureSpec[] = []) {
  const manager: Access = opts.manager_admin_only ? 'admin' : 'user';
  const rules: PolicyRule[] = [
    // The gateway's own surface.
    { id: 'health', prefix: ['health'], exact: true, access: 'public', owner: 'gateway' },
    // The one place a WebSocket may be opened (the relay); `/ws/…` below it is plain ComfyUI HTTP.
    { id: 'ws', prefix: ['ws'], exact: true, access: 'user', owner: 'comfy', websocket: true, family: 'comfy-ws' },
    { id: 'login', prefix: ['login'], exact: true, access: 'public', owner: 'gateway' },
    { id: 'register', prefix: ['register'], exact: true, access: 'public', owner: 'gateway' },
    // GET /logout ends the session (Sentinel's link), so a cross-site navigation carrying the Lax cookie is refused.
    { id: 'logout', prefix: ['logout'], exact: true, access: 'public', owner: 'gateway', getChangesState: true },
    { id: 'gateway-static', prefix: ['gateway', 'static'], access: 'public', owner: 'gateway' },
    // the account & administration page: every signed-in user manages their password and tokens there; the admin
    // sections are filled by admin-only APIs
    { id: 'admin-page', prefix: ['admin'], exact: true, access: 'user', owner: 'gateway' },
    { id: 'login-state', prefix: ['gateway', 'login-state'], exact: true, access: 'public', owner: 'gateway' },
    { id: 'metrics', prefix: ['metrics'], exact: true, access: 'admin', owner: 'gateway' },
    { id: 'gateway-admin-users', prefix: ['gateway', 'api', 'users'], access: 'admin', owner: 'gateway' },
    { id: 'gateway-admin-ip-lists', prefix: ['gateway', 'api', 'ip-lists'], access: 'admin', owner: 'gateway' },
    { id: 'gateway-admin-audit', prefix: ['gateway', 'api', 'audit'], access: 'admin', owner: 'gateway' },
    { id: 'gateway-admin-queue', prefix: ['gateway', 'api', 'queue'], access: 'admin', owner: 'gateway' },
    { id: 'gateway-api', prefix: ['gateway'], access: 'user', owner: 'gateway' },
    // ComfyUI's server-side model-download API, served by the gateway (permission checks inside).
    ...[
      'models-availability-status',
      'download-models',
      'cancel-model-download-session',
      'hf-auth-token-status',
      'hf-auth-login-start',
      'hf-auth-logout',
      'auth',
    ].map((r): PolicyRule => ({ id: `downloads-${r}`, prefix: [r], access: 'user', owner: 'gateway' })),
    // ComfyUI-Manager installs code: every family, with its /v2 twin (the /api twins are dropped by canonicalisation).
    // Its GET routes change state too, and a Lax session cookie rides a cross-site navigation (checkCsrf).
    ...MANAGER_FAMILIES.flatMap((f): PolicyRule[] => [
      { id: `manager-${f}`, prefix: [f], access: manager, owner: 'comfy', getChangesState: true },
      { id: `manager-v2-${f}`, prefix: ['v2', f], access: manager, owner: 'comfy', getChangesState: true },
    ]),
    { id: 'manager-extension-files', prefix: ['extensions', /^comfyui[-_]?manager/], access: manager, owner: 'comfy' },
    // Upstream internals and machine-wide effects.
    { id: 'internal', prefix: ['internal'], access: 'admin', owner: 'comfy' },
    { id: 'free', prefix: ['free'], exact: true, methods: ['POST'], access: 'admin', owner: 'comfy' },
    { id: 'users-create', prefix: ['users'], exact: true, methods: ['POST'], access: 'admin', owner: 'comfy' },
    // The real frontend and API clients read it at start-up: users get a redacted copy (isolation/systemStats.ts).
    { id: 'system-stats', prefix: ['system_stats'], exact: true, methods: ['GET', 'HEAD'], access: 'user', owner: 'comfy' },
    { id: 'system-stats-other', prefix: ['system_stats'], access: 'admin', owner: 'comfy' },
    // ComfyUI's assets API (`/api/assets…`, opt-in upstream) lists and serves every user's files and is not
    // isolated yet; the frontend bundle under `/assets/<file>` is not the API and stays open to users.
    { id: 'assets-api', prefix: ['assets'], apiOnly: true, access: 'admin', owner: 'comfy' },
    { id: 'assets-listing', prefix: ['assets'], exact: true, access: 'admin', owner: 'comfy' },
    // ComfyUI's own routes open to every signed-in user (isolation narrows what each one sees).
    ...[
      'prompt',
      'queue',
      'history',
      'interrupt',
      'free',
      'jobs',
      'view',
      'view_metadata',
      'upload',
      'object_info',
      'embeddings',
      'extensions',
      'models',
      'experiment',
      'features',
      'users',
      'userdata',
      'v2',
      'settings',
      'i18n',
      'workflow_templates',
      'global_subgraphs',
      'node_replacements',
      'logs',
      'ws',
      'templates',
      'scripts',
      'assets',
      'fonts',
      'cursor',
      'index.html',
      'index.css',
      'favicon.ico',
      'user.css',
      'manifest.json',
      'docs',
      'custom_node_templates',
    ].map((r): PolicyRule => ({ id: `comfy-${r}`, prefix: [r], access: 'user', owner: 'comfy' })),
    { id: 'comfy-root', prefix: [], exact: true, access: 'user', owner: 'comfy' },
  ];
  /** Anything else (custom nodes' own routes, frontend assets) is ComfyUI's and needs a signed-in user. */
  const fallback: PolicyRule = { id: 'comfy-default', prefix: [], access: 'user', owner: 'comfy' };

  const table = indexRules([...mergeSpecs(rules, fallback, specs, matches), ...rules]);

  return {
    /** every row, feature specs first (they are narrower than the core rows they inherit access from) */
    rules: table.rules,
    fallback,
    /** The one access decision for a canonical route and method; its rule is the spec that serves it. */
    decide(route: CanonicalRoute, method: string): Decision {
      const m = method.toUpperCase();
      const pick = (segments: string[]) => {
        const segs = segments.map((s) => s.toLowerCase());
        for (const r of table.candidates(segs[0])) if (matches(r, segs, m, route.apiPrefixed)) return r;
        return fallback;
      };
      const rule = pick(route.segments);
      const decision: Decision = { rule, access: rule.access };
      if (rule.getChangesState) decision.getChangesState = true;
      // An encoded slash: the path is forwarded with it kept in the segment, but a server that splits at it
      // would see another route. The stricter of the two readings wins; where it goes stays the forwarded one's.
      if (route.flatSegments) {
        const other = pick(route.flatSegments);
        if (RANK[other.access] > RANK[rule.access]) decision.access = other.access;
        if (other.getChangesState) decision.getChangesState = true;
      }
      return decision;
    },
  };
}

/** Whether a row applies to lower-cased segments, a method and the `/api` twin flag. */
export function matches(rule: PolicyRule, segs: string[], method: string, api: boolean): boolean {
  if (rule.methods && !rule.methods.includes(method)) return false;
  if (rule.apiOnly && !api) return false;
  if (segs.length < rule.prefix.length || (rule.exact && segs.length !== rule.prefix.length)) return false;
  for (let i = 0; i < rule.prefix.length; i++) {
    const p = rule.prefix[i];
    if (typeof p === 'string' ? p !== '*' && p !== segs[i] : !p.test(segs[i])) return false;
  }
  return true;
}

/** The policy table's interface. */
export type Policy = ReturnType<typeof createPolicy>;

import type { Interceptor } from '../app';
import type { PolicyRule } from './policy';

/**
 * A feature's route spec before it joins the table: where it lies and who answers. Access, owner and the CSRF
 * flag are not the feature's to say: they are inherited from the core row the spec falls under (one place
 * decides access), and composition fails if a spec straddles rows of different access or the wrong owner.
 */
export type FeatureSpec = Omit<PolicyRule, 'access' | 'owner' | 'family' | 'getChangesState' | 'websocket'>;

type Matcher = (rule: PolicyRule, segs: string[], method: string, api: boolean) => boolean;

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];

/** Turns feature specs into table rows with the access of the core rows they fall under; throws on a misfit. */
export function mergeSpecs(core: PolicyRule[], fallback: PolicyRule, specs: FeatureSpec[], matches: Matcher): PolicyRule[] {
  const ids = new Set(core.map((r) => r.id));
  return specs.map((spec): PolicyRule => {
    const fail = (why: string) => new Error(`route spec ${spec.id}: ${why}`);
    if (ids.has(spec.id)) throw fail('its id is not unique');
    ids.add(spec.id);
    if (!spec.serve === !spec.intercept) throw fail('must either serve or intercept');
    const owner = spec.serve ? 'gateway' : 'comfy';
    for (const p of spec.prefix) if (typeof p !== 'string' || p !== p.toLowerCase()) throw fail('path segments must be lower-case strings');
    // A `*` segment stands for any value, including every literal a core row names at that position
    // (`gateway/api/*` would also take `gateway/api/users`): each of them is checked, not one stand-in.
    let base: PolicyRule | undefined;
    for (const sample of samples(spec.prefix as string[], core))
      for (const m of spec.methods ?? METHODS)
        for (const api of [false, true]) {
          const r = core.find((c) => matches(c, sample, m, api)) ?? fallback;
          if (r.owner !== owner) throw fail(`${m} /${sample.join('/')} is not a ${owner} route of the policy table`);
          if (base && (r.access !== base.access || !!r.getChangesState !== !!base.getChangesState))
            throw fail(`straddles rows ${base.id} and ${r.id}`);
          base = r;
        }
    if (!base) throw fail('has no methods');
    // A prefix spec must not swallow a narrower core row of other access (it would take that row's requests).
    if (!spec.exact)
      for (const c of core)
        if (c.prefix.length > spec.prefix.length && spec.prefix.every((p, i) => p === '*' || p === c.prefix[i]) && c.access !== base.access)
          throw fail(`covers row ${c.id} of another access`);
    return {
      ...spec,
      owner,
      access: base.access,
      family: base.family ?? base.id,
      ...(base.getChangesState ? { getChangesState: true } : {}),
    };
  });
}

/**
 * The concrete paths a spec's `*` segments must be checked with: a neutral value and every literal the core rows
 * name at that position. A core row with a pattern there (a RegExp) cannot be enumerated: a `*` over it is refused.
 */
function samples(prefix: string[], core: PolicyRule[]): string[][] {
  let out: string[][] = [[]];
  prefix.forEach((seg, i) => {
    if (seg !== '*') return void (out = out.map((s) => [...s, seg]));
    const values = new Set(['x']);
    for (const c of core) {
      const at = c.prefix[i];
      if (at instanceof RegExp && prefix.slice(0, i).every((p, k) => p === c.prefix[k]))
        throw new Error(`route spec /${prefix.join('/')}: * over the pattern of row ${c.id}`);
      if (typeof at === 'string' && at !== '*') values.add(at);
    }
    out = out.flatMap((s) => [...values].map((v) => [...s, v]));
  });
  return out;
}

/** Rows grouped by first segment, each group in table order: decide() scans a handful of rows, not all of them. */
export function indexRules(rules: PolicyRule[]) {
  const wild = rules.filter((r) => typeof r.prefix[0] !== 'string' || r.prefix[0] === '*');
  const groups = new Map<string, PolicyRule[]>();
  for (const r of rules) {
    const first = r.prefix[0];
    if (typeof first === 'string' && first !== '*' && !groups.has(first))
      groups.set(
        first,
        rules.filter((x) => x.prefix[0] === first || wild.includes(x)),
      );
  }
  return {
    rules,
    /** the rows that may match a route whose first (lower-cased) segment is `first`, in table order */
    candidates: (first: string | undefined): PolicyRule[] => (first !== undefined && groups.get(first)) || wild,
  };
}

/** An interceptor's routes as feature specs, `intercept <id>` (`#n` tells a multi-route interceptor's specs apart). */
export function interceptSpecs(interceptors: Interceptor[]): FeatureSpec[] {
  const seen = new Set<string>();
  return interceptors.flatMap((icpt) => {
    if (seen.has(icpt.id)) throw new Error(`interceptor id ${icpt.id} is not unique`);
    seen.add(icpt.id);
    return icpt.routes.map((r, i): FeatureSpec => ({
      id: `intercept ${icpt.id}${icpt.routes.length > 1 ? `#${i + 1}` : ''}`,
      prefix: r.path.split('/').filter(Boolean),
      exact: !r.prefix,
      ...(r.methods ? { methods: r.methods } : {}),
      intercept: icpt,
    }));
  });
}

import express from 'express';
import helmet from 'helmet';
import type { RouteMount } from '../app';
import type { Audit } from '../audit';
import type { CredentialChain } from '../auth/chain';
import { errors } from '../errors';
import { getContext } from '../http/context';
import type { IpLists } from '../net/ipLists';
import { freshPrincipal } from './body';

/** Security headers for every gateway-owned response (pages, API, errors). ComfyUI's responses never get these:
 * its frontend uses inline scripts and would break; the proxy gives them `nosniff` only. */
export function securityHeaders(): RouteMount {
  return (app) => {
    app.use(
      helmet({
        contentSecurityPolicy: {
          useDefaults: false,
          directives: {
            defaultSrc: ["'self'"],
            scriptSrc: ["'self'"],
            styleSrc: ["'self'"],
            imgSrc: ["'self'", 'data:'],
            connectSrc: ["'self'"],
            fontSrc: ["'self'"],
            objectSrc: ["'none'"],
            baseUri: ["'none'"],
            formAction: ["'self'"],
            frameAncestors: ["'none'"],
          },
        },
        // Sent by the preflight on HTTPS responses only (it knows about trusted proxies; helmet does not).
        strictTransportSecurity: false,
        frameguard: { action: 'deny' },
        // Not `no-referrer`: that makes browsers send `Origin: null` on same-origin POSTs, which the CSRF check refuses.
        referrerPolicy: { policy: 'same-origin' },
      }),
    );
  };
}

const MAX_ENTRIES = 100_000;

function entriesOf(v: unknown, list: string, problems: Record<string, unknown>[]): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length > MAX_ENTRIES || !v.every((e) => typeof e === 'string' && e.length <= 100)) {
    problems.push({ list, message: `must be an array of at most ${MAX_ENTRIES} strings (IP addresses or CIDRs)` });
    return undefined;
  }
  return v as string[];
}

/** Admin API over the IP lists and the audit trail: GET|PUT /gateway/api/ip-lists, GET /gateway/api/audit. */
export function edgeRoutes(deps: { ipLists: IpLists; audit: Audit; chain: Pick<CredentialChain, 'authenticate'> }): RouteMount {
  const { ipLists, audit } = deps;
  const fresh = freshPrincipal(deps.chain);
  const adminOnly = (req: express.Request) => {
    // The policy table already limits these to admins; this is the belt to its braces.
    if (getContext(req).principal?.role !== 'admin') throw errors.forbidden('This route is for administrators');
  };
  return (app) => {
    app.get('/gateway/api/ip-lists', (req, res) => {
      adminOnly(req);
      res.set('Cache-Control', 'no-store').json(ipLists.get());
    });

    app.put('/gateway/api/ip-lists', express.json({ limit: '4mb' }), fresh, async (req, res) => {
      adminOnly(req);
      const body: unknown = req.body;
      if (!body || typeof body !== 'object' || Array.isArray(body))
        throw errors.invalidBody('Expected a JSON object {whitelist: [...], blacklist: [...]}');
      const b = body as Record<string, unknown>;
      const unknown = Object.keys(b).filter((k) => k !== 'whitelist' && k !== 'blacklist');
      const problems: Record<string, unknown>[] = [];
      if (unknown.length) problems.push({ message: `unknown field(s): ${unknown.join(', ')}` });
      const whitelist = entriesOf(b.whitelist, 'whitelist', problems);
      const blacklist = entriesOf(b.blacklist, 'blacklist', problems);
      if (!problems.length && whitelist === undefined && blacklist === undefined)
        problems.push({ message: 'give whitelist, blacklist or both' });
      if (problems.length) throw errors.invalidBody('Invalid IP lists', { problems });
      const before = ipLists.get();
      const ctx = getContext(req);
      const after = await ipLists.replace({ whitelist, blacklist }, ctx.clientIp);
      audit.record({
        event: 'ip_lists_updated',
        user: ctx.principal?.username ?? null,
        ip: ctx.clientIp,
        user_agent: req.headers['user-agent'],
        whitelist: { before: before.whitelist.length, after: after.whitelist.length },
        blacklist: { before: before.blacklist.length, after: after.blacklist.length },
      });
      res.set('Cache-Control', 'no-store').json(after);
    });

    app.get('/gateway/api/audit', (req, res) => {
      adminOnly(req);
      const raw = getContext(req).query.get('limit');
      const n = raw === null || raw === '' ? 100 : Number(raw);
      if (!Number.isInteger(n) || n < 1) throw errors.invalidBody('limit must be a positive integer (at most 1000)', { limit: raw });
      res.set('Cache-Control', 'no-store').json({ events: audit.recent(Math.min(n, 1000)) });
    });
  };
}

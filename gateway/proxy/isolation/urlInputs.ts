import dns from 'node:dns';
import { errors } from '../../errors';
import { isPublicAddress } from '../../downloads/hosts';
import { parseIp, parseRange, type Range } from '../../net/clientIp';
import { isObj } from './http';

/** Resolves a host name to its addresses (dns.lookup by default, so /etc/hosts counts as it does for ComfyUI). */
export type Resolver = (hostname: string) => Promise<string[]>;

/** Refuses prompts whose inputs make ComfyUI fetch from places the gateway guards (non-admins only). */
export interface UrlGuard {
  /** throws 400 PROMPT_REFUSED naming the node when an input is an http(s) URL to a refused address */
  check(prompt: unknown): Promise<void>;
}

const URLISH = /^\s*https?:/i;
const MAX_URLS = 64;

const refused = (why: string, details: Record<string, unknown>) => errors.promptRefused(`Prompt refused: ${why}`, details);

/** An address or CIDR entry of the allow-list, or null for a host name. */
export function asRange(entry: string): Range | null {
  try {
    return parseRange(entry);
  } catch {
    return null;
  }
}

/** Every string in an input value (structured widgets keep strings one or two levels down). */
function* strings(v: unknown, depth = 0): Generator<string> {
  if (typeof v === 'string') yield v;
  else if (depth < 4 && Array.isArray(v)) for (const x of v) yield* strings(x, depth + 1);
  else if (depth < 4 && isObj(v)) for (const x of Object.values(v)) yield* strings(x, depth + 1);
}

/**
 * Builds the guard. A node input that is an http(s) URL (URL-loading nodes fetch it from the ComfyUI host, past the
 * gateway) must name a host whose every address is public unicast — not loopback, private, link-local,
 * unspecified, CGNAT, multicast or reserved — and not one of the upstream's own addresses. `allow` lists host names
 * (exact; trusted without resolving) and addresses/CIDRs an admin lets users fetch from anyway; the upstream's own
 * host name and addresses stay refused even then. Names are resolved here, at submission: a name that resolves
 * differently on the ComfyUI host later (DNS rebinding) is beyond what a proxy can see.
 * URLs with user info, backslashes or white space are refused outright (parsers disagree about their host).
 */
export function createUrlGuard(deps: { allow: string[]; upstreamOrigin: string; resolver?: Resolver }): UrlGuard {
  const resolve: Resolver =
    deps.resolver ?? (async (h) => (await dns.promises.lookup(h, { all: true, verbatim: true })).map((a) => a.address));
  const allowHosts = new Set<string>();
  const allowRanges: Range[] = [];
  for (const entry of deps.allow) {
    const range = asRange(entry);
    if (range) allowRanges.push(range);
    else allowHosts.add(entry.trim().toLowerCase().replace(/\.$/, ''));
  }
  const inRanges = (addr: string) => {
    const ip = parseIp(addr);
    return !!ip && allowRanges.some(([net, bits]) => net.kind() === ip.kind() && ip.match(net, bits));
  };

  const addressesOf = async (host: string): Promise<string[]> => {
    const literal = parseIp(host);
    if (literal) return [literal.toString()];
    return resolve(host);
  };
  const upstreamHost = new URL(deps.upstreamOrigin).hostname.replace(/^\[|\]$/g, '');
  let upstreamAddrs: Promise<Set<string>> | null = null;
  const upstreamAddresses = () => {
    // Learned once, and again after a failure (ComfyUI's host name may not resolve at start-up).
    upstreamAddrs ??= addressesOf(upstreamHost).then(
      (a) => new Set(a.map((x) => parseIp(x)?.toString() ?? x)),
      () => {
        upstreamAddrs = null;
        return new Set<string>();
      },
    );
    return upstreamAddrs;
  };

  async function checkUrl(value: string, where: Record<string, unknown>): Promise<void> {
    const text = value.trim();
    if (/[\\\s@]/.test(text.replace(/^https?:\/\//i, '').split(/[/?#]/)[0]) || /[\u0000-\u001f\\]/.test(text)) {
      throw refused('URLs with user info, backslashes or white space in the host part are not allowed', where);
    }
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw refused('an input that starts like a URL is not one', where);
    }
    if (url.username || url.password) throw refused('URLs with user info are not allowed', where);
    const host = url.hostname
      .replace(/^\[|\]$/g, '')
      .replace(/\.$/, '')
      .toLowerCase();
    const at = { ...where, host };
    if (host === upstreamHost.toLowerCase()) throw refused('URLs to the ComfyUI server itself are not allowed', at);
    // A name the admin listed is trusted as named (it may resolve only on the ComfyUI host's network).
    if (allowHosts.has(host)) return;
    let addrs: string[];
    try {
      addrs = (await addressesOf(host)).map((a) => parseIp(a)?.toString() ?? a);
    } catch {
      throw refused(`the host ${host} does not resolve here`, at);
    }
    if (!addrs.length) throw refused(`the host ${host} does not resolve here`, at);
    const up = await upstreamAddresses();
    if (addrs.some((a) => up.has(a))) throw refused('URLs to the ComfyUI server itself are not allowed', at);
    for (const a of addrs) {
      if (!isPublicAddress(a) && !inRanges(a))
        throw refused(`${host} is a loopback, private, link-local or otherwise internal address`, at);
    }
  }

  return {
    async check(prompt) {
      if (!isObj(prompt)) return;
      const pending: Promise<void>[] = [];
      for (const [nodeId, node] of Object.entries(prompt)) {
        if (!isObj(node) || !isObj(node.inputs)) continue;
        for (const [name, value] of Object.entries(node.inputs)) {
          for (const s of strings(value)) {
            if (!URLISH.test(s)) continue;
            if (pending.length >= MAX_URLS) throw refused(`more than ${MAX_URLS} URLs in one prompt`, { node: nodeId, input: name });
            pending.push(checkUrl(s, { node: nodeId, input: name }));
          }
        }
      }
      // Every check settles before the first refusal is thrown (no lookup left running unobserved).
      const results = await Promise.allSettled(pending);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    },
  };
}

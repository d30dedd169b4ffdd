import ipaddr from 'ipaddr.js';
import { parseIp } from '../net/clientIp';
import { hasModelExtension } from './modelId';

/** One allow-list entry: `host` (https on the default port) or `host:port` (that port only). */
export interface HostRule {
  /** lower-case hostname as WHATWG URL prints it (IPv6 in brackets) */
  host: string;
  /** null: the scheme's default port only */
  port: number | null;
  /**
   * Entries that name a port, and IP literals, are explicit admin choices: they may resolve to private or loopback
   * addresses (local test servers, LAN mirrors). Plain names never may.
   */
  allowPrivate: boolean;
  /** plain http is allowed only for an explicitly listed loopback host:port (tests) */
  allowHttp: boolean;
}

/** The outcome of checking a URL against the allow-list. */
export type UrlCheck = { ok: true; url: URL; rule: HostRule } | { ok: false; reason: string };

const LOOPBACK_NAMES = new Set(['localhost']);

/** True for an IP literal (with or without IPv6 brackets). */
export function isIpLiteral(host: string): boolean {
  return parseIp(host) !== null;
}

/** True when the address may be connected to without an explicit allowance: a public unicast address. */
export function isPublicAddress(addr: string): boolean {
  const ip = parseIp(addr);
  return !!ip && ip.range() === 'unicast';
}

function isLoopbackHost(host: string): boolean {
  if (LOOPBACK_NAMES.has(host)) return true;
  const ip = parseIp(host);
  return !!ip && ip.range() === 'loopback';
}

/** Parses `host`, `host:port`, `[v6]` or `[v6]:port`; throws on anything else. */
export function parseHostRule(entry: string): HostRule {
  const s = entry.trim().toLowerCase();
  let host: string;
  let portStr: string | undefined;
  const v6 = /^\[([0-9a-f:.]+)\](?::(\d+))?$/.exec(s);
  if (v6) {
    host = `[${v6[1]}]`;
    portStr = v6[2];
  } else {
    const m = /^([a-z0-9.-]+)(?::(\d+))?$/.exec(s);
    if (!m) throw new Error(`not a host or host:port: ${JSON.stringify(entry)}`);
    host = m[1];
    portStr = m[2];
  }
  let normalized: string;
  try {
    normalized = new URL(`https://${host}/`).hostname;
  } catch {
    throw new Error(`not a host or host:port: ${JSON.stringify(entry)}`);
  }
  if (v6 && !ipaddr.IPv6.isValid(v6[1])) throw new Error(`not an IPv6 address: ${JSON.stringify(entry)}`);
  const port = portStr === undefined ? null : Number(portStr);
  if (port !== null && (!Number.isInteger(port) || port < 1 || port > 65535)) throw new Error(`bad port in ${JSON.stringify(entry)}`);
  const explicit = port !== null || isIpLiteral(normalized);
  return { host: normalized, port, allowPrivate: explicit, allowHttp: port !== null && isLoopbackHost(normalized) };
}

/** The allow-lists: `allowed_hosts` for the URL a client names, plus `redirect_hosts` for redirect hops. */
export interface HostPolicy {
  /** checks the URL a client asked for: allow-listed host, https, no userinfo, a model file path */
  checkInitial(raw: string): UrlCheck;
  /** checks a redirect hop: allow-listed or redirect host, https, no userinfo */
  checkRedirect(target: URL): UrlCheck;
  /** hosts that receive the caller's HuggingFace token (the HF endpoint and huggingface.co, never a CDN) */
  isHf(url: URL): boolean;
  /** `org/repo` of an HF `/<org>/<repo>/resolve/<rev>/<file>` URL, else null */
  repoId(url: URL): string | null;
}

/** Builds the host policy from the config lists and the HF endpoint. Throws on a malformed entry. */
export function createHostPolicy(opts: { allowedHosts: string[]; redirectHosts: string[]; hfEndpoint: string }): HostPolicy {
  const allowed = opts.allowedHosts.map(parseHostRule);
  const redirect = [...allowed, ...opts.redirectHosts.map(parseHostRule)];
  const hf = new URL(opts.hfEndpoint);
  const hfHost = hf.host.toLowerCase();

  function match(url: URL, rules: HostRule[]): HostRule | undefined {
    const host = url.hostname.toLowerCase();
    const port = url.port === '' ? null : Number(url.port);
    const effective = port ?? (url.protocol === 'https:' ? 443 : 80);
    return rules.find((r) => r.host === host && (r.port === null ? port === null : r.port === effective));
  }

  function check(url: URL, rules: HostRule[]): UrlCheck {
    if (url.protocol !== 'https:' && url.protocol !== 'http:') return { ok: false, reason: 'only https URLs are allowed' };
    if (url.username || url.password) return { ok: false, reason: 'credentials in the URL are not allowed' };
    const rule = match(url, rules);
    if (!rule) return { ok: false, reason: `host ${url.host} is not allow-listed` };
    if (url.protocol === 'http:' && !rule.allowHttp) return { ok: false, reason: 'only https URLs are allowed' };
    if (isIpLiteral(url.hostname) && !isPublicAddress(url.hostname) && !rule.allowPrivate)
      return { ok: false, reason: 'private addresses are not allowed' };
    return { ok: true, url, rule };
  }

  return {
    checkInitial(raw) {
      if (typeof raw !== 'string' || raw.length === 0 || raw.length > 4096) return { ok: false, reason: 'not a URL' };
      // WHATWG parsing silently drops tabs/newlines and reads `\` as `/`; a URL that needs that is refused outright.
      if (/[\s\\\u0000-\u001f\u007f]/.test(raw)) return { ok: false, reason: 'malformed URL' };
      let url: URL;
      try {
        url = new URL(raw);
      } catch {
        return { ok: false, reason: 'not a URL' };
      }
      const r = check(url, allowed);
      if (!r.ok) return r;
      if (!hasModelExtension(url.pathname))
        return { ok: false, reason: 'the URL must name a model file (.safetensors, .sft, .ckpt, .pth, .pt)' };
      return r;
    },
    checkRedirect(target) {
      return check(target, redirect);
    },
    isHf(url) {
      const host = url.host.toLowerCase();
      return host === hfHost || (url.hostname.toLowerCase() === 'huggingface.co' && url.port === '');
    },
    repoId(url) {
      if (!this.isHf(url)) return null;
      const parts = url.pathname.replace(/^\/+/, '').split('/');
      if (parts.length < 5 || parts[2] !== 'resolve' || !parts[0] || !parts[1]) return null;
      const seg = /^[A-Za-z0-9._-]+$/;
      if (!seg.test(parts[0]) || !seg.test(parts[1])) return null;
      return `${parts[0]}/${parts[1]}`;
    },
  };
}

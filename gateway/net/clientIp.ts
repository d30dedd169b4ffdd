import type { IncomingMessage } from 'node:http';
import ipaddr from 'ipaddr.js';
import { ConfigError } from '../config/load';

/** An address range: network address and prefix length. */
export type Range = [ipaddr.IPv4 | ipaddr.IPv6, number];

const IPV4_WITH_PORT = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/;
const BRACKETED_V6 = /^\[([^\]]+)\](?::\d{1,5})?$/;

/** Parses exactly an address (dotted-quad IPv4 or IPv6, no port, no zone), IPv4-mapped IPv6 normalised to IPv4. */
function parseAddress(v: string): ipaddr.IPv4 | ipaddr.IPv6 | null {
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  // Only dotted-quad IPv4: ipaddr.js would also read `10`, `127.1` or `0x7f.1`, which no proxy writes and which
  // would make list entries and header values mean something other than what they show.
  if (ipaddr.IPv4.isValidFourPartDecimal(v)) addr = ipaddr.IPv4.parse(v);
  else if (v.includes(':') && !v.includes('%') && ipaddr.IPv6.isValid(v)) addr = ipaddr.IPv6.parse(v);
  else return null;
  if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress()) return (addr as ipaddr.IPv6).toIPv4Address();
  return addr;
}

/**
 * Parses an address as sockets and forwarders write it, normalising IPv4-mapped IPv6 to IPv4; null when unparsable.
 * A `:port` suffix (IPv4, or bracketed IPv6) and an IPv6 zone are dropped.
 */
export function parseIp(s: string | undefined | null): ipaddr.IPv4 | ipaddr.IPv6 | null {
  if (typeof s !== 'string') return null;
  // The same few client addresses are parsed several times per request (client IP, IP lists, brute-force unit):
  // ipaddr.js parsing was ~4 % of a small GET's CPU. Bounded (entries and key length): a flood of addresses cannot grow it.
  if (s.length > 100) return parseIpUncached(s);
  const hit = parsed.get(s);
  if (hit !== undefined) return hit;
  const addr = parseIpUncached(s);
  if (parsed.size >= PARSED_MAX) parsed.clear();
  parsed.set(s, addr);
  return addr;
}

const PARSED_MAX = 4096;
const parsed = new Map<string, ipaddr.IPv4 | ipaddr.IPv6 | null>();

function parseIpUncached(s: string): ipaddr.IPv4 | ipaddr.IPv6 | null {
  let v = s.trim();
  if (!v || v.length > 80) return null;
  const br = BRACKETED_V6.exec(v);
  if (br) v = br[1];
  else {
    const p = IPV4_WITH_PORT.exec(v);
    if (p) v = p[1];
  }
  const zone = v.indexOf('%');
  if (zone >= 0 && v.includes(':')) v = v.slice(0, zone);
  return parseAddress(v);
}

/** Normalised textual form of an address (IPv4-mapped IPv6 becomes IPv4); null when unparsable. */
export function normalizeIp(s: string | undefined | null): string | null {
  return parseIp(s)?.toString() ?? null;
}

/** Parses a list entry — `a.b.c.d`, `a.b.c.d/n`, IPv6, IPv6/n — into a range; throws an Error saying why otherwise. */
export function parseRange(entry: string): Range {
  const s = entry.trim();
  const bad = () => new Error(`not an IP address or CIDR: ${JSON.stringify(entry)}`);
  const slash = s.indexOf('/');
  if (slash < 0) {
    const addr = parseAddress(s);
    if (!addr) throw bad();
    return [addr, addr.kind() === 'ipv4' ? 32 : 128];
  }
  const addrText = s.slice(0, slash);
  const bitsText = s.slice(slash + 1);
  const addr = /^\d{1,3}$/.test(bitsText) ? parseAddress(addrText) : null;
  if (!addr) throw bad();
  const bits = Number(bitsText);
  // An IPv4-mapped network was normalised to IPv4; its prefix length still counts the 96 mapping bits.
  const mapped = addr.kind() === 'ipv4' && addrText.includes(':');
  const max = addr.kind() === 'ipv4' && !mapped ? 32 : 128;
  if (bits > max || (mapped && bits < 96)) throw new Error(`prefix length out of range: ${JSON.stringify(entry)}`);
  return [addr, mapped ? bits - 96 : bits];
}

/** True when the address lies in any of the ranges (IPv4 only matches IPv4 ranges, IPv6 only IPv6). */
export function inRanges(ip: string | ipaddr.IPv4 | ipaddr.IPv6, ranges: Range[]): boolean {
  const addr = typeof ip === 'string' ? parseIp(ip) : ip;
  if (!addr) return false;
  return ranges.some(([net, bits]) => net.kind() === addr.kind() && addr.match(net, bits));
}

/** The socket peer address, normalised (a destroyed socket has none: `0.0.0.0`, which nothing trusts). */
export function socketIp(req: IncomingMessage): string {
  return normalizeIp(req.socket.remoteAddress) ?? '0.0.0.0';
}

/** Forwarder headers matched by exact name; families are matched by prefix below. */
const FORWARDING_HEADERS = new Set([
  'forwarded',
  'via',
  'x-real-ip',
  'true-client-ip',
  'x-client-ip',
  'client-ip',
  'x-cluster-client-ip',
  'fastly-client-ip',
  'x-envoy-external-address',
  'x-azure-clientip',
  'x-appengine-user-ip',
  'akamai-origin-hop',
  'x-proxyuser-ip',
  'x-host',
  'x-url-scheme',
]);
/** `x-forwarded-*` (and bare `x-forwarded`), Cloudflare's `cf-*` (cf-connecting-ip, cf-access-*, cf-ray, cf-visitor),
 * `x-original-*` (IIS/ARR, some ingresses) and tailscale's `tailscale-*` (serve/funnel). */
const FORWARDING_PREFIXES = ['x-forwarded', 'cf-', 'x-original-', 'tailscale-'];

/** True when the request carries any header a forwarder adds — then it is not "local", whatever the socket says. */
export function hasForwardingHeaders(req: IncomingMessage): boolean {
  // rawHeaders too: a name Node does not normalise (e.g. with underscores) still counts as a forwarder's mark.
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i].toLowerCase().replace(/_/g, '-');
    if (FORWARDING_HEADERS.has(name) || FORWARDING_PREFIXES.some((p) => name.startsWith(p))) return true;
  }
  return false;
}

/** True when the socket peer is a loopback address (127/8, ::1, or IPv4-mapped loopback). */
export function isLoopbackSocket(req: IncomingMessage): boolean {
  const addr = parseIp(req.socket.remoteAddress);
  return !!addr && addr.range() === 'loopback';
}

/** Loopback socket and no forwarding header of any kind: the only case treated as "on this host". */
export function isDirectLoopback(req: IncomingMessage): boolean {
  return isLoopbackSocket(req) && !hasForwardingHeaders(req);
}

/** The client-IP function, plus the two other answers that depend on the same trust decision. */
export interface ClientIp {
  /** the client's address: the socket's, or — only when the socket is a trusted proxy — the configured header's */
  (req: IncomingMessage): string;
  /** true when the socket peer is inside `trusted_proxies` (only then are forwarding headers believed) */
  fromTrustedProxy(req: IncomingMessage): boolean;
  /** true over a TLS socket, or when a trusted proxy says the original request was HTTPS (`X-Forwarded-Proto`) */
  isSecure(req: IncomingMessage): boolean;
  /** the host the client asked for: a trusted proxy's `X-Forwarded-Host`, else `Host` */
  originalHost(req: IncomingMessage): string | undefined;
}

const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

/**
 * The one client-IP function: the socket address, unless the socket is a trusted proxy; then the configured header
 * (`x-forwarded-for` read right to left skipping trusted hops; `cf-connecting-ip` / `x-real-ip` taken whole).
 * Anything missing or unparsable yields the socket address. Throws ConfigError on a bad `trusted_proxies` entry.
 */
export function createClientIp(opts: { trusted_proxies: string[]; client_ip_header: string }): ClientIp {
  const problems: string[] = [];
  const trusted: Range[] = [];
  opts.trusted_proxies.forEach((cidr, i) => {
    try {
      trusted.push(parseRange(cidr));
    } catch (e) {
      problems.push(`trusted_proxies[${i}]: ${(e as Error).message}`);
    }
  });
  if (problems.length) throw new ConfigError(problems);
  const header = opts.client_ip_header.toLowerCase();

  // A socket's peer and whether it is trusted never change: worked out once per connection, not per question
  // (the front door asks several times per request, and a keep-alive connection carries many requests).
  const peers = new WeakMap<object, { ip: string; trusted: boolean }>();
  const peer = (req: IncomingMessage) => {
    let p = peers.get(req.socket);
    if (!p || req.socket.remoteAddress === undefined) {
      const ip = socketIp(req);
      p = { ip, trusted: trusted.length > 0 && inRanges(ip, trusted) };
      // a socket without an address yet (or any more) is not remembered
      if (req.socket.remoteAddress !== undefined) peers.set(req.socket, p);
    }
    return p;
  };
  const fromTrustedProxy = (req: IncomingMessage) => peer(req).trusted;

  const clientIp = ((req: IncomingMessage): string => {
    const { ip: sock, trusted: viaProxy } = peer(req);
    if (!viaProxy) return sock;
    const raw = req.headers[header];
    // Node joins repeated custom headers with ", "; for XFF that is the same list, so the walk below still holds.
    const value = Array.isArray(raw) ? raw.join(',') : raw;
    if (!value) return sock;
    if (header !== 'x-forwarded-for') {
      // A single-address header: a list means it was repeated (client copy plus proxy copy) — believe neither.
      return normalizeIp(value) ?? sock;
    }
    // Right to left: each trusted hop appended what it saw; the first hop we do not trust is the client.
    // Everything left of it was written by the client and is never read.
    const hops = value.split(',').map((h) => h.trim());
    for (let i = hops.length - 1; i >= 0; i--) {
      const ip = parseIp(hops[i]);
      if (!ip) return sock;
      if (!inRanges(ip, trusted)) return ip.toString();
    }
    // Every hop is a trusted proxy: the farthest one is the best answer we have.
    return normalizeIp(hops[0]) ?? sock;
  }) as ClientIp;

  clientIp.fromTrustedProxy = fromTrustedProxy;
  clientIp.isSecure = (req) => {
    if ((req.socket as { encrypted?: boolean }).encrypted) return true;
    if (!fromTrustedProxy(req)) return false;
    // The outermost proxy (the one the browser spoke to) writes the first value.
    const proto = first(req.headers['x-forwarded-proto'])?.split(',')[0].trim().toLowerCase();
    return proto === 'https';
  };
  clientIp.originalHost = (req) => {
    if (fromTrustedProxy(req)) {
      const fwd = first(req.headers['x-forwarded-host'])?.split(',')[0].trim();
      if (fwd) return fwd;
    }
    return req.headers.host;
  };
  return clientIp;
}

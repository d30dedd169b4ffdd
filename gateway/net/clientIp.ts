import type { IncomingMessage } from 'node:http';
import ipaddr from 'ipaddr.js';

type Range = [ipaddr.IPv4 | ipaddr.IPv6, number];

/** Parses an address, normalising IPv4-mapped IPv6 to IPv4; null when unparsable. */
export function parseIp(s: string | undefined | null): ipaddr.IPv4 | ipaddr.IPv6 | null {
  if (!s) return null;
  let v = s.trim();
  if (v.startsWith('[') && v.includes(']')) v = v.slice(1, v.indexOf(']'));
  const zone = v.indexOf('%');
  if (zone >= 0) v = v.slice(0, zone);
  if (!ipaddr.isValid(v)) return null;
  const addr = ipaddr.parse(v);
  if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress()) return (addr as ipaddr.IPv6).toIPv4Address();
  return addr;
}

/** Normalised textual form of an address (IPv4-mapped IPv6 becomes IPv4). */
export function normalizeIp(s: string | undefined | null): string | null {
  return parseIp(s)?.toString() ?? null;
}

/** Parses `a.b.c.d`, `a.b.c.d/n`, IPv6 and IPv6/n into a range; throws on anything else. */
export function parseRange(entry: string): Range {
  const s = entry.trim();
  if (s.includes('/')) {
    const [addr, bits] = ipaddr.parseCIDR(s);
    if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96)
      return [(addr as ipaddr.IPv6).toIPv4Address(), bits - 96];
    return [addr, bits];
  }
  const addr = parseIp(s);
  if (!addr) throw new Error(`not an IP address or CIDR: ${JSON.stringify(entry)}`);
  return [addr, addr.kind() === 'ipv4' ? 32 : 128];
}

/** True when the address lies in any of the ranges. */
export function inRanges(ip: string, ranges: Range[]): boolean {
  const addr = parseIp(ip);
  if (!addr) return false;
  return ranges.some(([net, bits]) => net.kind() === addr.kind() && addr.match(net, bits));
}

/** The socket peer address, normalised. */
export function socketIp(req: IncomingMessage): string {
  return normalizeIp(req.socket.remoteAddress) ?? '0.0.0.0';
}

/** Every header a forwarder (proxy, tunnel daemon, CDN) may add. */
const FORWARDING_HEADERS = ['forwarded', 'x-real-ip', 'cf-connecting-ip', 'true-client-ip', 'x-client-ip', 'fastly-client-ip'];

/** True when the request carries any header a forwarder adds — then it is not "local", whatever the socket says. */
export function hasForwardingHeaders(req: IncomingMessage): boolean {
  for (const name of Object.keys(req.headers)) {
    if (name.startsWith('x-forwarded-') || name.startsWith('cf-') || FORWARDING_HEADERS.includes(name)) return true;
  }
  return false;
}

/** True when the socket peer is a loopback address. */
export function isLoopbackSocket(req: IncomingMessage): boolean {
  const addr = parseIp(req.socket.remoteAddress);
  return !!addr && addr.range() === 'loopback';
}

/** Loopback socket and no forwarding header of any kind: the only case treated as "on this host". */
export function isDirectLoopback(req: IncomingMessage): boolean {
  return isLoopbackSocket(req) && !hasForwardingHeaders(req);
}

/** The one client-IP function: the socket address, unless the socket is a trusted proxy (then its header). */
export function createClientIp(opts: { trusted_proxies: string[]; client_ip_header: string }): (req: IncomingMessage) => string {
  const trusted = opts.trusted_proxies.map(parseRange);
  const header = opts.client_ip_header.toLowerCase();
  return (req) => {
    const sock = socketIp(req);
    if (!trusted.length || !inRanges(sock, trusted)) return sock;
    const raw = req.headers[header];
    const value = Array.isArray(raw) ? raw.join(',') : raw;
    if (!value) return sock;
    if (header !== 'x-forwarded-for') return normalizeIp(value.split(',')[0]) ?? sock;
    // Right to left: the nearest hop we do not trust is the client; anything left of it is client-written.
    const hops = value.split(',').map((h) => h.trim());
    for (let i = hops.length - 1; i >= 0; i--) {
      const ip = normalizeIp(hops[i]);
      if (!ip) return sock;
      if (!inRanges(ip, trusted)) return ip;
    }
    return normalizeIp(hops[0]) ?? sock;
  };
}

import type { IncomingMessage } from 'node:http';
import { ConfigError } from '../gateway/config/load';
import { createClientIp, hasForwardingHeaders, inRanges, isDirectLoopback, normalizeIp, parseRange } from '../gateway/net/clientIp';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { hit } from './helpers/edge';

/** A request as the client-IP function sees it: a socket address, headers, optionally TLS. */
function fakeReq(remoteAddress: string | undefined, headers: Record<string, string | string[]> = {}, encrypted = false): IncomingMessage {
  const lower: Record<string, string | string[]> = {};
  const raw: string[] = [];
  for (const [k, v] of Object.entries(headers)) {
    lower[k.toLowerCase()] = v;
    for (const one of ([] as string[]).concat(v)) raw.push(k, one);
  }
  return { socket: { remoteAddress, encrypted }, headers: lower, rawHeaders: raw } as unknown as IncomingMessage;
}

describe('parsing', () => {
  test('addresses: dotted quads and IPv6 only; mapped IPv6 becomes IPv4; ports and zones dropped', () => {
    expect(normalizeIp('203.0.113.7')).toBe('203.0.113.7');
    expect(normalizeIp('::ffff:203.0.113.7')).toBe('203.0.113.7');
    expect(normalizeIp('::FFFF:7f00:1')).toBe('127.0.0.1');
    expect(normalizeIp('2001:DB8::1')).toBe('2001:db8::1');
    expect(normalizeIp('203.0.113.7:5555')).toBe('203.0.113.7');
    expect(normalizeIp('[2001:db8::1]:443')).toBe('2001:db8::1');
    expect(normalizeIp('fe80::1%eth0')).toBe('fe80::1');
    for (const bad of [
      '',
      '10',
      '127.1',
      '0x7f.0.0.1',
      '010.0.0.1',
      '1.2.3.256',
      'unknown',
      '1.2.3.4, 5.6.7.8',
      'example.com',
      undefined,
      null,
    ])
      expect(normalizeIp(bad as string)).toBeNull();
  });

  test('list entries: IPv4, IPv6, CIDR; anything else throws', () => {
    expect(inRanges('10.1.2.3', [parseRange('10.0.0.0/8')])).toBe(true);
    expect(inRanges('11.1.2.3', [parseRange('10.0.0.0/8')])).toBe(false);
    expect(inRanges('2001:db8::42', [parseRange('2001:db8::/32')])).toBe(true);
    expect(inRanges('::ffff:10.9.9.9', [parseRange('10.0.0.0/8')])).toBe(true);
    expect(inRanges('10.9.9.9', [parseRange('::ffff:10.0.0.0/104')])).toBe(true);
    expect(inRanges('10.9.9.9', [parseRange('::/0')])).toBe(false); // an IPv4 client is not in an IPv6 range
    for (const bad of [
      '10',
      '127.1',
      '1.2.3.4/33',
      '::1/129',
      '1.2.3.4:80',
      '1.2.3.4/',
      '/8',
      '1.2.3.4/8/8',
      'fe80::1%eth0',
      '[::1]',
      'a.b.c.d',
      '1.2.3.4 5.6.7.8',
    ])
      expect(() => parseRange(bad)).toThrow(/not an IP address or CIDR|prefix length/);
  });
});

describe('createClientIp', () => {
  const xff = createClientIp({ trusted_proxies: ['10.0.0.0/8', '2001:db8:1::/48'], client_ip_header: 'x-forwarded-for' });

  test('an untrusted socket is the answer, whatever it claims', () => {
    for (const h of ['x-forwarded-for', 'x-real-ip', 'cf-connecting-ip', 'true-client-ip', 'forwarded'])
      expect(xff(fakeReq('198.51.100.9', { [h]: '203.0.113.1' }))).toBe('198.51.100.9');
    expect(xff(fakeReq('::ffff:198.51.100.9', { 'x-forwarded-for': '10.0.0.1' }))).toBe('198.51.100.9');
    // no trusted proxies at all: headers are never read
    const none = createClientIp({ trusted_proxies: [], client_ip_header: 'x-forwarded-for' });
    expect(none(fakeReq('10.0.0.5', { 'x-forwarded-for': '203.0.113.1' }))).toBe('10.0.0.5');
  });

  test('a trusted socket: X-Forwarded-For right to left, skipping trusted hops; the client-written left part is never read', () => {
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': '203.0.113.5' }))).toBe('203.0.113.5');
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': '1.1.1.1, 203.0.113.5' }))).toBe('203.0.113.5');
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': '1.1.1.1, 203.0.113.5, 10.0.0.7' }))).toBe('203.0.113.5');
    expect(xff(fakeReq('::ffff:10.0.0.1', { 'x-forwarded-for': '::ffff:203.0.113.5' }))).toBe('203.0.113.5');
    expect(xff(fakeReq('2001:db8:1::9', { 'x-forwarded-for': '2001:db8:2::1' }))).toBe('2001:db8:2::1');
    // repeated headers are one list (node joins them)
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': ['1.1.1.1', '203.0.113.5'] }))).toBe('203.0.113.5');
    // all hops trusted: the farthest one
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': '10.0.0.3, 10.0.0.2' }))).toBe('10.0.0.3');
    // a port on a hop is tolerated
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': '203.0.113.5:4711' }))).toBe('203.0.113.5');
  });

  test('a trusted socket with a missing or unparsable header → the socket address', () => {
    expect(xff(fakeReq('10.0.0.1'))).toBe('10.0.0.1');
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': '' }))).toBe('10.0.0.1');
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': 'garbage' }))).toBe('10.0.0.1');
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': '203.0.113.5, bogus' }))).toBe('10.0.0.1');
    expect(xff(fakeReq('10.0.0.1', { 'x-forwarded-for': '127.1' }))).toBe('10.0.0.1');
    // other headers are not the configured one
    expect(xff(fakeReq('10.0.0.1', { 'x-real-ip': '203.0.113.5' }))).toBe('10.0.0.1');
  });

  test('single-address headers (cf-connecting-ip, x-real-ip): taken whole from a trusted socket; a list is not believed', () => {
    for (const header of ['cf-connecting-ip', 'x-real-ip']) {
      const f = createClientIp({ trusted_proxies: ['10.0.0.0/8'], client_ip_header: header });
      expect(f(fakeReq('10.0.0.1', { [header]: '203.0.113.5' }))).toBe('203.0.113.5');
      expect(f(fakeReq('10.0.0.1', { [header]: '::ffff:203.0.113.5' }))).toBe('203.0.113.5');
      expect(f(fakeReq('10.0.0.1', { [header]: '6.6.6.6, 203.0.113.5' }))).toBe('10.0.0.1');
      expect(f(fakeReq('10.0.0.1', { [header]: 'nope' }))).toBe('10.0.0.1');
      expect(f(fakeReq('10.0.0.1', { 'x-forwarded-for': '203.0.113.5' }))).toBe('10.0.0.1');
      expect(f(fakeReq('198.51.100.1', { [header]: '203.0.113.5' }))).toBe('198.51.100.1');
    }
  });

  test('HTTPS: a TLS socket, or X-Forwarded-Proto from a trusted proxy only', () => {
    expect(xff.isSecure(fakeReq('198.51.100.9', {}, true))).toBe(true);
    expect(xff.isSecure(fakeReq('198.51.100.9', { 'x-forwarded-proto': 'https' }))).toBe(false);
    expect(xff.isSecure(fakeReq('10.0.0.1', { 'x-forwarded-proto': 'https' }))).toBe(true);
    expect(xff.isSecure(fakeReq('10.0.0.1', { 'x-forwarded-proto': 'http' }))).toBe(false);
    expect(xff.isSecure(fakeReq('10.0.0.1'))).toBe(false);
    expect(xff.originalHost(fakeReq('198.51.100.9', { host: 'a.example', 'x-forwarded-host': 'evil.example' }))).toBe('a.example');
    expect(xff.originalHost(fakeReq('10.0.0.1', { host: 'internal:8189', 'x-forwarded-host': 'comfy.example' }))).toBe('comfy.example');
  });

  test('a bad trusted_proxies entry is a ConfigError naming it', () => {
    expect(() =>
      createClientIp({ trusted_proxies: ['10.0.0.0/8', '10.0.0.0/40', 'proxy.lan'], client_ip_header: 'x-forwarded-for' }),
    ).toThrow(ConfigError);
    expect(() => createClientIp({ trusted_proxies: ['127.1'], client_ip_header: 'x-forwarded-for' })).toThrow(
      /trusted_proxies\[0\]: not an IP address or CIDR/,
    );
  });
});

describe('direct loopback', () => {
  test('loopback socket without forwarding headers only', () => {
    expect(isDirectLoopback(fakeReq('127.0.0.1', { host: 'localhost' }))).toBe(true);
    expect(isDirectLoopback(fakeReq('::1'))).toBe(true);
    expect(isDirectLoopback(fakeReq('::ffff:127.0.0.1'))).toBe(true);
    expect(isDirectLoopback(fakeReq('127.0.0.2'))).toBe(true);
    expect(isDirectLoopback(fakeReq('192.168.1.5'))).toBe(false);
    expect(isDirectLoopback(fakeReq(undefined))).toBe(false);
  });

  test('any forwarding header of any kind makes it not local', () => {
    const headers = [
      'X-Forwarded-For',
      'X-Forwarded-Proto',
      'X-Forwarded-Host',
      'X-Forwarded-Port',
      'X-Forwarded-Server',
      'X-Forwarded',
      'Forwarded',
      'X-Real-IP',
      'CF-Connecting-IP',
      'True-Client-IP',
      'Cf-Access-Jwt-Assertion',
      'Cf-Access-Authenticated-User-Email',
      'CF-Ray',
      'CF-Visitor',
      'CF-IPCountry',
      'Via',
      'X-Client-IP',
      'Fastly-Client-IP',
      'X-Cluster-Client-IP',
      'X-Original-Forwarded-For',
      'Tailscale-User-Login',
      'X_Forwarded_For',
    ];
    for (const h of headers) {
      const req = fakeReq('127.0.0.1', { [h]: '203.0.113.1' });
      expect([h, hasForwardingHeaders(req)]).toEqual([h, true]);
      expect([h, isDirectLoopback(req)]).toEqual([h, false]);
    }
    expect(hasForwardingHeaders(fakeReq('127.0.0.1', { 'User-Agent': 'curl', Accept: '*/*', 'X-API-Key': 'k', Host: 'localhost' }))).toBe(
      false,
    );
  });
});

describe('through a real gateway: the address ComfyUI is told is the one the gateway decided on', () => {
  let fake: FakeComfy;
  let gw: TestGateway;
  beforeAll(async () => {
    fake = await startFakeComfy();
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, trusted_proxies: ['127.0.0.2'] });
  });
  afterAll(async () => {
    await gw.close();
    await fake.close();
  });

  const seenFor = async (from: string, headers: Record<string, string>) => {
    fake.clearRequests();
    const res = await hit(gw.url, '/object_info?edge-ip', { from, headers: { 'x-api-key': TEST_KEY, ...headers } });
    expect(res.status).toBe(200);
    const r = fake.requests.find((q) => q.rawPath.includes('edge-ip'));
    return r?.headers['x-forwarded-for'];
  };

  test('untrusted socket 127.0.0.3: its own address, spoofed headers ignored', async () => {
    expect(await seenFor('127.0.0.3', { 'X-Forwarded-For': '203.0.113.9' })).toBe('127.0.0.3');
    expect(await seenFor('127.0.0.3', { 'X-Real-IP': '203.0.113.9', 'CF-Connecting-IP': '203.0.113.9' })).toBe('127.0.0.3');
  });

  test('trusted socket 127.0.0.2: the nearest untrusted hop', async () => {
    expect(await seenFor('127.0.0.2', { 'X-Forwarded-For': '6.6.6.6, 203.0.113.9' })).toBe('203.0.113.9');
    expect(await seenFor('127.0.0.2', { 'X-Forwarded-For': 'junk' })).toBe('127.0.0.2');
    expect(await seenFor('127.0.0.2', {})).toBe('127.0.0.2');
  });
});

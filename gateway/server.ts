import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import type { Composed } from './compose';

/** A listening gateway and its orderly shutdown. */
export interface Running {
  server: http.Server;
  port: number;
  url: string;
  /** every URL the socket really answers on (each interface address when bound to 0.0.0.0 or ::) */
  urls: string[];
  /** stop accepting, finish in-flight requests, close WebSockets with 1001, flush stores */
  shutdown(timeoutMs?: number): Promise<void>;
}

/** Serves a composed gateway over HTTP or HTTPS (config.tls) on host:port (0 = any free port). */
export async function listen(c: Composed, host = c.config.host, port = c.config.port): Promise<Running> {
  const { gateway, config } = c;
  const base = config.configPath ? path.dirname(config.configPath) : process.cwd();
  const server: http.Server = config.tls
    ? https.createServer(
        { cert: fs.readFileSync(path.resolve(base, config.tls.cert)), key: fs.readFileSync(path.resolve(base, config.tls.key)) },
        gateway.handle,
      )
    : http.createServer(gateway.handle);
  server.on('upgrade', gateway.upgrade);
  server.on('clientError', (err, socket) => {
    // Malformed request lines, oversized headers: answer if we still can, never throw.
    if (socket.writable) {
      const code = (err as NodeJS.ErrnoException).code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
      socket.end(
        `HTTP/1.1 ${code} ${code === 431 ? 'Request Header Fields Too Large' : 'Bad Request'}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`,
      );
    } else socket.destroy();
  });
  server.headersTimeout = 30_000;
  server.requestTimeout = 0; // large uploads stream for as long as they need
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as { port: number };
  const shownHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  let closing: Promise<void> | null = null;
  return {
    server,
    port: addr.port,
    url: `${config.tls ? 'https' : 'http'}://${shownHost}:${addr.port}`,
    urls: listenedUrls(host, addr.port, config.tls ? 'https' : 'http'),
    shutdown(timeoutMs = 10_000) {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        gateway.closeSockets();
        server.closeIdleConnections();
        const deadline = Date.now() + timeoutMs;
        while (gateway.inFlight() > 0 && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 25));
          server.closeIdleConnections();
        }
        server.closeAllConnections();
        await closed;
        await c.close();
      })();
      return closing;
    },
  };
}

/** The URLs a socket bound to `host` answers on: a wildcard host expands to every interface address. */
export function listenedUrls(host: string, port: number, scheme: string): string[] {
  const fmt = (a: string) => `${scheme}://${a.includes(':') ? `[${a}]` : a}:${port}`;
  if (host !== '0.0.0.0' && host !== '::') return [fmt(host)];
  const addrs: string[] = [];
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) {
      // '::' is dual-stack on Linux (IPv4 too); '0.0.0.0' is IPv4 only. Link-local IPv6 needs a zone: skip it.
      if (a.family === 'IPv4' || (host === '::' && !a.address.startsWith('fe80'))) addrs.push(a.address);
    }
  }
  addrs.sort((a, b) => Number(a.includes(':')) - Number(b.includes(':')) || Number(a !== '127.0.0.1') - Number(b !== '127.0.0.1'));
  return addrs.map(fmt);
}

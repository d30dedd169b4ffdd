import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import type { Composed } from './compose';

/** A listening gateway and its orderly shutdown. */
export interface Running {
  server: http.Server;
  port: number;
  url: string;
  /** stop accepting, finish in-flight requests, close WebSockets with 1001, flush stores */
  shutdown(timeoutMs?: number): Promise<void>;
}

/** Serves a composed gateway over HTTP or HTTPS (config.tls) on host:port (0 = any free port). */
export async function listen(c: Composed, host = c.config.host, port = c.config.port): Promise<Running> {
  const { gateway, config } = c;
  const base = config.configPath ? path.dirname(config.configPath) : process.cwd();
  const server: http.Server = config.tls
    ? https.createServer({ cert: fs.readFileSync(path.resolve(base, config.tls.cert)), key: fs.readFileSync(path.resolve(base, config.tls.key)) }, gateway.handle)
    : http.createServer(gateway.handle);
  server.on('upgrade', gateway.upgrade);
  server.on('clientError', (err, socket) => {
    // Malformed request lines, oversized headers: answer if we still can, never throw.
    if (socket.writable) {
      const code = (err as NodeJS.ErrnoException).code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
      socket.end(`HTTP/1.1 ${code} ${code === 431 ? 'Request Header Fields Too Large' : 'Bad Request'}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
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

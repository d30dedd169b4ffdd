import http from 'node:http';
import net from 'node:net';

/** A tiny round-robin load balancer (HTTP and WebSocket upgrades), with no stickiness of any kind. */
export interface RoundRobin {
  url: string;
  /** how many requests each target got */
  hits: number[];
  close(): Promise<void>;
}

/** Starts the balancer on 127.0.0.1 in front of `targets` (ports on 127.0.0.1); a dead target answers 502. */
export async function startRoundRobin(targets: number[]): Promise<RoundRobin> {
  let next = 0;
  const hits = targets.map(() => 0);
  const pick = () => {
    const i = next++ % targets.length;
    hits[i]++;
    return targets[i];
  };
  const server = http.createServer((req, res) => {
    const up = http.request({ host: '127.0.0.1', port: pick(), method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end('bad gateway');
    });
    req.pipe(up);
  });
  server.on('upgrade', (req, socket, head) => {
    const up = net.connect(pick(), '127.0.0.1', () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(lines.join('\r\n') + '\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    const done = () => {
      up.destroy();
      socket.destroy();
    };
    up.on('error', done);
    socket.on('error', done);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    hits,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

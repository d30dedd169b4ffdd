/*
 * A calibration point for `npm run bench`: the least a Node reverse proxy can do (a `node:http` pipe with a keep-alive
 * agent, no auth, no header hygiene, no log) in its own process. gateway / bare separates what the gateway adds from
 * what Node's own HTTP machinery costs on the machine; it is not a product and has none of the gateway's guarantees.
 */
import http from 'node:http';

function main(): void {
  const upstream = new URL(process.argv[2]);
  const agent = new http.Agent({ keepAlive: true });
  const server = http.createServer((req, res) => {
    const up = http.request(
      { hostname: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers, agent },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  server.listen(0, '127.0.0.1', () => {
    const a = server.address() as { port: number };
    process.send!({ url: `http://127.0.0.1:${a.port}` });
  });
}

main();

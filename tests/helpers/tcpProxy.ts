import net from 'node:net';

/** A TCP relay a test can cut: stands between a gateway and its PostgreSQL (or Redis) to take it "down". */
export interface TcpProxy {
  port: number;
  /** url with host:port replaced by the relay's */
  via(url: string): string;
  /** drops every open connection and refuses new ones (the server looks stopped) */
  block(): void;
  unblock(): void;
  close(): Promise<void>;
}

/** Starts a relay on 127.0.0.1 to `target` (host:port). */
export async function startTcpProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  let blocked = false;
  const open = new Set<net.Socket>();
  const server = net.createServer((client) => {
    if (blocked) return client.destroy();
    const upstream = net.connect(targetPort, targetHost);
    open.add(client);
    open.add(upstream);
    const done = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const block = () => {
    blocked = true;
    for (const s of open) s.destroy();
    open.clear();
  };
  return {
    port,
    via(url) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    block,
    unblock() {
      blocked = false;
    },
    async close() {
      block();
      await new Promise((r) => server.close(r));
    },
  };
}

import WebSocket from 'ws';

/**
 * The relay's way to the other workers (gateway/queue Workers.openSockets): opens one upstream socket per ComfyUI
 * worker but the first for a relayed client socket and returns the function that closes them.
 */
export type WorkerSockets = (
  pathAndQuery: string,
  headers: Record<string, string>,
  deliver: (data: Buffer, isBinary: boolean) => void,
) => () => void;

/**
 * Opens one more upstream socket per extra worker for a relayed client socket, with the same path, clientId and
 * headers, and hands each frame to `deliver` (the relay's own hooks and client). A worker that is down, or goes
 * away, is tried again every few seconds while the client stays: a worker coming back is heard by itself.
 * Returns the function that closes them all.
 */
export function openExtraUpstreams(
  origins: string[],
  pathAndQuery: string,
  headers: Record<string, string>,
  deliver: (data: Buffer, isBinary: boolean) => void,
  retryMs = 3000,
): () => void {
  let closed = false;
  const sockets = new Set<WebSocket>();
  const timers = new Set<NodeJS.Timeout>();
  function connect(origin: string): void {
    if (closed) return;
    const ws = new WebSocket(`${origin.replace(/^http/, 'ws')}${pathAndQuery}`, {
      headers,
      handshakeTimeout: 5000,
      perMessageDeflate: false,
      maxPayload: 64 * 1024 * 1024,
    });
    sockets.add(ws);
    ws.on('message', (d, isBinary) => deliver(Buffer.isBuffer(d) ? d : Array.isArray(d) ? Buffer.concat(d) : Buffer.from(d), isBinary));
    ws.on('error', () => undefined);
    ws.on('close', () => {
      sockets.delete(ws);
      if (closed) return;
      const t = setTimeout(() => {
        timers.delete(t);
        connect(origin);
      }, retryMs);
      t.unref();
      timers.add(t);
    });
  }
  for (const o of origins) connect(o);
  return () => {
    closed = true;
    for (const t of timers) clearTimeout(t);
    for (const ws of sockets) ws.terminate();
  };
}

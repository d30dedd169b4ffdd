import WebSocket from 'ws';

/** A client socket that queues every frame it receives, so tests can await them in order. */
export interface TestSocket {
  ws: WebSocket;
  frames: { data: Buffer; isBinary: boolean }[];
  /** resolves with the next frame matching `pred` (already received ones included) */
  next(
    pred?: (f: { data: Buffer; isBinary: boolean; json?: any }) => boolean,
    timeoutMs?: number,
  ): Promise<{ data: Buffer; isBinary: boolean; json?: any }>;
  closed: Promise<{ code: number; reason: string }>;
  close(): void;
}

/** Opens a WebSocket and resolves once it is open; rejects with the HTTP status if the handshake is refused. */
export function openSocket(url: string, headers: Record<string, string> = {}): Promise<TestSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    const frames: { data: Buffer; isBinary: boolean; json?: any }[] = [];
    const waiters: (() => void)[] = [];
    ws.on('message', (d, isBinary) => {
      const data = Buffer.isBuffer(d) ? d : Buffer.from(d as ArrayBuffer);
      const f: { data: Buffer; isBinary: boolean; json?: any } = { data, isBinary };
      if (!isBinary) {
        try {
          f.json = JSON.parse(data.toString('utf8'));
        } catch {
          /* not JSON */
        }
      }
      frames.push(f);
      waiters.splice(0).forEach((w) => w());
    });
    const closed = new Promise<{ code: number; reason: string }>((r) =>
      ws.on('close', (code, reason) => r({ code, reason: reason.toString() })),
    );
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => reject(Object.assign(new Error(`handshake refused: ${res.statusCode}`), { status: res.statusCode, body })));
    });
    ws.once('error', reject);
    ws.once('open', () =>
      resolve({
        ws,
        frames,
        closed,
        close: () => ws.close(),
        next(pred = () => true, timeoutMs = 5000) {
          return new Promise((res, rej) => {
            let idx = 0;
            const scan = () => {
              for (; idx < frames.length; idx++) {
                if (pred(frames[idx])) {
                  const f = frames[idx];
                  frames.splice(idx, 1);
                  clearTimeout(t);
                  return (res(f), true);
                }
              }
              return false;
            };
            const t = setTimeout(() => rej(new Error('timed out waiting for a frame')), timeoutMs);
            if (scan()) return;
            const again = () => {
              if (!scan()) waiters.push(again);
            };
            waiters.push(again);
          });
        },
      }),
    );
  });
}

import net from 'node:net';

/** Sends raw bytes to 127.0.0.1:port and returns whatever the server answered before closing (or `waitMs`). */
export function rawExchange(port: number, data: string | Buffer, waitMs = 1500): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    s.on('data', (d) => (out += d.toString('latin1')));
    s.on('error', () => resolve(out));
    s.on('close', () => resolve(out));
    s.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
    setTimeout(() => s.destroy(), waitMs);
  });
}

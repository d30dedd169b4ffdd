import { startFakeComfy } from '../tests/helpers/fakeComfy';

/** The fake ComfyUI in its own process for the benchmark; takes commands over IPC. */
async function main(): Promise<void> {
  const fake = await startFakeComfy({ port: 0 });
  // keep the request log from growing without bound during load
  setInterval(() => fake.clearRequests(), 500).unref();
  process.on('message', (m: { cmd: string; count?: number; bytes?: number; name?: string; msg?: object }) => {
    if (m.cmd === 'blast') {
      const msg = m.msg ?? { type: 'status', data: { status: { exec_info: { queue_remaining: 0 } } } };
      for (let i = 0; i < (m.count ?? 0); i++) fake.sendWs(null, msg);
      process.send!({ cmd: 'blasted' });
    } else if (m.cmd === 'file') {
      const file = require('node:path').join(fake.outputDir, m.name!);
      require('node:fs').mkdirSync(require('node:path').dirname(file), { recursive: true });
      require('node:fs').writeFileSync(file, Buffer.alloc(m.bytes!, 0x42));
      process.send!({ cmd: 'filed' });
    } else if (m.cmd === 'exit') {
      void fake.close().then(() => process.exit(0));
    }
  });
  process.send!({ cmd: 'ready', url: fake.url, outputDir: fake.outputDir });
}

void main();

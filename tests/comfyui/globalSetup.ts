/** Jest globalSetup of the conformance suite: installs the real servers or fails the whole run loudly. */
import { ensureSetup, serversDir, comfyHome } from './realComfy';

export default function globalSetup(): void {
  const t0 = Date.now();
  try {
    ensureSetup();
  } catch (e) {
    process.stderr.write(`\n\nCONFORMANCE SUITE CANNOT RUN: ${(e as Error).message}\n\n`);
    throw e;
  }
  process.stderr.write(`\nreal ComfyUI servers ready (scripts ${serversDir()}, COMFY_HOME ${comfyHome()}, ${Date.now() - t0} ms)\n`);
}

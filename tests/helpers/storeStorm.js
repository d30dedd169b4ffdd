/* Write storm for the kill -9 test: opens the real user store on argv[2] and creates users named
 * `${argv[3]}-<n>` as fast as it can (several writes in flight, coalesced by the store), printing
 * `ack <n>` once user n is durably written. The parent kills it with SIGKILL at a random moment.
 * Run as: node tests/helpers/storeStorm.js FILE PREFIX — it loads the built store (npm test builds dist/ first),
 * because transpiling TypeScript in each of the six children was slow enough to time out on a loaded machine. */
const path = require('node:path');
const { createUserStore } = require(path.join(__dirname, '..', '..', 'dist', 'gateway', 'users', 'store.js'));

async function main() {
  const [file, prefix] = process.argv.slice(2);
  const store = await createUserStore({ file });
  const hash = '$2b$04$' + 'x'.repeat(53);
  let n = 0;
  process.stdout.write('ready\n');
  for (;;) {
    const batch = [];
    for (let i = 0; i < 4; i++) {
      const k = n++;
      batch.push(
        store
          .create({ username: `${prefix}-${k}`, password_hash: hash, role: 'user', permissions: [`p${k % 7}`] })
          .then(() => store.revocations.revoke(`${prefix}-jti-${k}`, Math.floor(Date.now() / 1000) + 3600))
          .then(() => process.stdout.write(`ack ${k}\n`)),
      );
    }
    await Promise.all(batch);
  }
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack) + '\n');
  process.exit(1);
});

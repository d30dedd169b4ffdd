#!/usr/bin/env node
import fs from 'node:fs';
import path from 'node:path';
import { EXIT } from './exitCodes';

// The gateway and the users CLI are loaded only when run: --help and --version answer without loading them.
const runGateway = async (argv: string[]) => (await import('./main')).runGateway(argv);
const runUsersCli = async (...args: Parameters<typeof import('./users/cli').runUsersCli>) =>
  (await import('./users/cli')).runUsersCli(...args);

const HELP = `usage: comfyui-gateway [serve] [options]        run the gateway
       comfyui-gateway users <command> [...]     manage users (comfyui-gateway users --help)
       comfyui-gateway migrate-store --from file --to postgres [--config FILE] [--url URL]
                                                 copy a single-process install into PostgreSQL (for several replicas)
       comfyui-gateway --help | --version

options (each overrides config.json):
  --config FILE         the configuration file (JSON; given once; default ./config.json when it exists)
  --host HOST           address to listen on (default 0.0.0.0)
  --port PORT           port to listen on (default 8189)
  --upstream URL        ComfyUI's address (default http://127.0.0.1:8188)
  --data-dir DIR        users, secrets, ledger and the log (default ./data)
  --api-key KEY         static API key (>= 16 characters); or --api-key-file FILE, or COMFYUI_GATEWAY_API_KEY
  --log-level LEVEL     trace, debug, info, warn, error, fatal or silent

exit codes:
  0  stopped cleanly (SIGTERM/SIGINT), or the command succeeded
  1  a runtime failure: the port is busy or not allowed, an operation was refused (e.g. LAST_ADMIN)
  2  a usage or configuration error (every problem is listed in one message on stderr)`;

/** The version in the package.json this build came from. */
export function packageVersion(from = __dirname): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) {
      const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'comfyui-gateway') return pkg.version ?? 'unknown';
    }
    if (path.dirname(dir) === dir) return 'unknown';
  }
}

/** The `comfyui-gateway` executable: dispatches to the server or a sub-command. */
export async function runBin(argv: string[]): Promise<void> {
  const [first, ...rest] = argv;
  if (first === '--help' || first === '-h' || first === 'help') {
    if (first === 'help' && rest[0] === 'users') return exitWith(await runUsersCli(['--help'], stdio()));
    process.stdout.write(`${HELP}\n`);
    return exitWith(EXIT.OK);
  }
  if (first === '--version' || first === '-V' || first === 'version') {
    process.stdout.write(`comfyui-gateway ${packageVersion()}\n`);
    return exitWith(EXIT.OK);
  }
  // The users CLI holds the store's lock file and stdin: exit as soon as it is done.
  if (first === 'users') process.exit(await runUsersCli(rest, stdio()));
  if (first === 'migrate-store') {
    const { runMigrateStore } = await import('./store/migrateStore');
    return exitWith(await runMigrateStore(rest, stdio()));
  }
  if (first === 'serve' && (rest.includes('--help') || rest.includes('-h'))) {
    process.stdout.write(`${HELP}\n`);
    return exitWith(EXIT.OK);
  }
  if (first === 'serve') return runGateway(withDefaultConfig(rest));
  if (first !== undefined && !first.startsWith('-')) {
    process.stderr.write(`comfyui-gateway: unknown command ${JSON.stringify(first)}\n${HELP}\n`);
    return exitWith(EXIT.USAGE);
  }
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${HELP}\n`);
    return exitWith(EXIT.OK);
  }
  return runGateway(withDefaultConfig(argv));
}

/** `--config` defaults to ./config.json when it exists (as for `users`), so `npm start -- --config X` is not a repeat. */
function withDefaultConfig(argv: string[]): string[] {
  const given = argv.some((a) => a === '--config' || a.startsWith('--config='));
  return given || !fs.existsSync(path.resolve('config.json')) ? argv : ['--config', 'config.json', ...argv];
}

function stdio() {
  return { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, cwd: process.cwd(), env: process.env };
}

function exitWith(code: number): void {
  process.exitCode = code;
}

if (require.main === module) {
  runBin(process.argv.slice(2)).catch((err) => {
    process.stderr.write(`comfyui-gateway: ${(err as Error).stack ?? err}\n`);
    process.exit(EXIT.RUNTIME);
  });
}

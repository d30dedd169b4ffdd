#!/usr/bin/env node
import { composeGateway } from './compose';
import { StoreStartError } from './store/compose';
import { ConfigError, loadConfig } from './config/load';
import { summarizeConfig } from './config/summary';
import { EXIT } from './exitCodes';
import { listen } from './server';
import { fixHeapGrowth, raiseGlibcTrimThreshold } from './heapTuning';

export { EXIT };

/** Why a socket could not be opened, in words an operator acts on. */
function listenProblem(err: NodeJS.ErrnoException, host: string, port: number): string {
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  switch (err.code) {
    case 'EADDRINUSE':
      return `cannot listen on ${where}: the port is already in use (is another gateway running? choose another with --port)`;
    case 'EACCES':
      return `cannot listen on ${where}: permission denied (ports below 1024 need privileges; use a higher --port)`;
    case 'EADDRNOTAVAIL':
      return `cannot listen on ${where}: no network interface has that address (check --host)`;
    default:
      return `cannot listen on ${where}: ${err.message}`;
  }
}

/** Runs the gateway: load config, build everything, listen, and shut down in order on SIGTERM/SIGINT. */
export async function runGateway(argv: string[]): Promise<void> {
  raiseGlibcTrimThreshold();
  fixHeapGrowth();
  const fail = (message: string, code: number) => {
    process.stderr.write(`comfyui-gateway: ${message}\n`);
    process.exit(code);
  };
  let config;
  try {
    config = loadConfig(argv);
  } catch (e) {
    if (e instanceof ConfigError) return fail(e.message, EXIT.USAGE);
    throw e;
  }
  let composed;
  try {
    composed = await composeGateway(config, { pretty: Boolean(process.stdout.isTTY) });
  } catch (e) {
    // e.g. a malformed whitelist/blacklist line: same one-message refusal as a bad config.json
    if (e instanceof ConfigError) return fail(e.message, EXIT.USAGE);
    if (e instanceof StoreStartError) {
      // Not process.exit: the log file may still be opening (pino's exit hook would throw); with everything
      // closed by composeGateway the process ends by itself.
      process.stderr.write(`comfyui-gateway: ${e.message}\n`);
      process.exitCode = EXIT.RUNTIME;
      return;
    }
    // the metrics listener (metrics.port) opens during composition
    const err = e as NodeJS.ErrnoException;
    if (err.code && config.metrics.port !== null) return fail(listenProblem(err, '127.0.0.1', config.metrics.port), EXIT.RUNTIME);
    throw e;
  }
  const { logger } = composed;
  logger.info(summarizeConfig(config), 'configuration loaded');
  // Signals are handled before the port opens, so a SIGTERM right after start-up still drains cleanly.
  let running: Awaited<ReturnType<typeof listen>> | null = null;
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    (running ? running.shutdown() : composed.close()).then(
      () => process.exit(EXIT.OK),
      (err) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(EXIT.RUNTIME);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('uncaughtException', (err) => logger.error({ err }, 'uncaught exception (kept running)'));
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection (kept running)'));

  try {
    running = await listen(composed);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (!err.code) throw e;
    stopping = true;
    await composed.close().catch(() => undefined);
    // No process.exit here: pino's exit hook throws while the log file is still opening (a fast failure), and
    // with every service closed the process ends by itself once that open completes.
    process.stderr.write(`comfyui-gateway: ${listenProblem(err, config.host, config.port)}\n`);
    process.exitCode = EXIT.RUNTIME;
    setTimeout(() => process.exit(EXIT.RUNTIME), 5000).unref();
    return;
  }
  for (const n of composed.notices) {
    logger.warn(n);
    process.stderr.write(`comfyui-gateway: ${n}\n`);
  }
  const others = running.urls.filter((u) => u !== running!.url);
  const admin = `${running.url}/admin`;
  logger.info({ urls: running.urls, upstream: config.upstream, admin }, 'comfyui-gateway listening');
  process.stderr.write(
    `comfyui-gateway: listening on ${running.url}${others.length ? ` and ${others.join(', ')}` : ''}` +
      `${config.host === '0.0.0.0' || config.host === '::' ? ` (all interfaces, ${config.host})` : ''}` +
      ` in front of ${config.upstream}; admin page: ${admin}\n`,
  );
}

if (require.main === module) void runGateway(process.argv.slice(2));

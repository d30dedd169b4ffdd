#!/usr/bin/env node
import { composeGateway } from './compose';
import { ConfigError, loadConfig, redactConfig } from './config/load';
import { listen } from './server';

/** Composition root: load config, build everything, listen, and shut down in order on SIGTERM/SIGINT. */
async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.argv.slice(2));
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`comfyui-gateway: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  let composed;
  try {
    composed = await composeGateway(config);
  } catch (e) {
    // e.g. a malformed whitelist/blacklist line: same one-message refusal as a bad config.json
    if (e instanceof ConfigError) {
      process.stderr.write(`comfyui-gateway: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const { logger } = composed;
  logger.info({ config: redactConfig(config) }, 'configuration loaded');
  // Signals are handled before the port opens, so a SIGTERM right after start-up still drains cleanly.
  let running: Awaited<ReturnType<typeof listen>> | null = null;
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    (running ? running.shutdown() : composed.close()).then(
      () => process.exit(0),
      (err) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('uncaughtException', (err) => logger.error({ err }, 'uncaught exception (kept running)'));
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection (kept running)'));

  running = await listen(composed);
  for (const n of composed.notices) {
    logger.warn(n);
    process.stderr.write(`comfyui-gateway: ${n}\n`);
  }
  logger.info({ url: running.url, upstream: config.upstream }, 'comfyui-gateway listening');
  process.stderr.write(`comfyui-gateway: listening on ${running.url} in front of ${config.upstream}\n`);
}

void main();

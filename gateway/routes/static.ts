import path from 'node:path';
import express from 'express';
import type { RouteMount } from '../app';

/** Where the gateway's own pages and assets live (public/ at the repository root). */
export const PUBLIC_DIR = path.resolve(__dirname, '..', '..', ...(__dirname.includes(`${path.sep}dist${path.sep}`) ? ['..'] : []), 'public');

/** Serves public/ under /gateway/static/ with a strict CSP: no inline scripts anywhere. */
export function staticRoutes(): RouteMount {
  return (app) => {
    app.use(
      '/gateway/static',
      (_req, res, next) => {
        res.setHeader('Content-Security-Policy', "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
        res.setHeader('X-Content-Type-Options', 'nosniff');
        next();
      },
      express.static(PUBLIC_DIR, { index: false, dotfiles: 'deny', fallthrough: true, maxAge: '1h' }),
    );
  };
}

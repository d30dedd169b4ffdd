import path from 'node:path';
import express from 'express';
import type { RouteMount } from '../app';

/** Where the gateway's own pages and assets live (public/ at the repository root). */
export const PUBLIC_DIR = path.resolve(
  __dirname,
  '..',
  '..',
  ...(__dirname.includes(`${path.sep}dist${path.sep}`) ? ['..'] : []),
  'public',
);

const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/** Serves public/ under /gateway/static/ with a strict CSP: no inline scripts anywhere; the admin page also at /admin. */
export function staticRoutes(): RouteMount {
  return (app) => {
    // /admin needs a signed-in user (policy table): a signed-out browser is sent to /login?next=/admin first.
    app.get('/admin', (_req, res) => {
      res.setHeader('Content-Security-Policy', CSP);
      res.setHeader('Cache-Control', 'no-store');
      res.sendFile(path.join(PUBLIC_DIR, 'admin.html'));
    });
    app.use(
      '/gateway/static',
      (_req, res, next) => {
        res.setHeader('Content-Security-Policy', CSP);
        res.setHeader('X-Content-Type-Options', 'nosniff');
        next();
      },
      express.static(PUBLIC_DIR, { index: false, dotfiles: 'deny', fallthrough: true, maxAge: '1h' }),
    );
  };
}

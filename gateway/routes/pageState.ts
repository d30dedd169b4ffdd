import type { RouteMount } from '../app';

/**
 * GET /gateway/login-state: what the sign-in page needs to word itself (is this the first run?). Public, and no
 * more than POST /register already tells anyone (its `setup_required`).
 */
export function pageStateRoutes(deps: { setupPending: () => boolean }): RouteMount {
  return (app) => {
    app.get('/gateway/login-state', (_req, res) => {
      res.set('Cache-Control', 'no-store').json({ first_run: deps.setupPending() });
    });
  };
}

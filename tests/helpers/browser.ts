import fs from 'node:fs';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';

/** Debian's Chromium; CI installs it with `apt-get install -y chromium`. */
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** Flags for a headless Chromium in a container: no sandbox, no GPU, no background traffic. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Launches Chromium; throws (the test fails, it is never skipped) when the binary is missing. */
export async function launchBrowser(): Promise<Browser> {
  if (!fs.existsSync(CHROMIUM_PATH)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM_PATH}. The browser tests need it: run \`apt-get install -y chromium\` ` +
        '(or set CHROMIUM_PATH). These tests fail rather than skip so a missing browser is never mistaken for a pass.',
    );
  }
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
}

/** Something a page complained about: a console error, an uncaught exception, or a CSP violation. */
export interface PageProblem {
  kind: 'console' | 'pageerror' | 'csp';
  text: string;
  url: string;
}

/**
 * Records every console error, uncaught exception and Content-Security-Policy violation of the pages in a
 * context (violations are reported by the page itself via `securitypolicyviolation`, which CDP cannot miss).
 */
export async function watchProblems(context: BrowserContext): Promise<PageProblem[]> {
  const problems: PageProblem[] = [];
  // A string, not a function: the tests are type-checked without the DOM library.
  await context.addInitScript(
    "document.addEventListener('securitypolicyviolation', function (e) {" +
      " console.error('CSP violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') + ' in ' + (e.sourceFile || e.documentURI)); });",
  );
  const attach = (page: Page) => {
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      const text = msg.text();
      problems.push({
        kind: /CSP violation|Content Security Policy|Refused to/i.test(text) ? 'csp' : 'console',
        text,
        url: msg.location().url,
      });
    });
    page.on('pageerror', (err) => problems.push({ kind: 'pageerror', text: err.message, url: page.url() }));
  };
  context.pages().forEach(attach);
  context.on('page', attach);
  return problems;
}

/**
 * The problems that matter: everything except a failed-resource console line for an expected HTTP status
 * (e.g. the sign-in page's "am I already signed in?" probe answering 401).
 */
export function unexpectedProblems(problems: PageProblem[], allowed: { status: number; path: string }[] = []): PageProblem[] {
  return problems.filter((p) => {
    if (p.kind !== 'console') return true;
    const m = /Failed to load resource: the server responded with a status of (\d+)/.exec(p.text);
    if (!m) return true;
    let path = p.url;
    try {
      path = new URL(p.url).pathname;
    } catch {
      /* keep the raw url */
    }
    return !allowed.some((a) => a.status === Number(m[1]) && a.path === path);
  });
}

/** Pulls the one-time setup code out of the gateway's start-up notices. */
export function setupCodeFrom(notices: string[]): string {
  for (const n of notices) {
    const m = /setup code: ([A-Z0-9]{4}(?:-[A-Z0-9]{4}){3})/i.exec(n);
    if (m) return m[1];
  }
  throw new Error(`no setup code in the gateway's notices: ${JSON.stringify(notices)}`);
}

// What every real-browser script shares: reading its CONFIG.json, a watchdog, named steps
// that stop at the first failed check, browser contexts that present a device certificate,
// the navigations seen, and the report of a failure (step, navigations, page text).
//
// The device certificate is presented by Playwright (`clientCertificates`): TLS to Vigil ends
// inside this Node process, so NODE_EXTRA_CA_CERTS must name the test CA before node starts.
// Set VIGIL_BROWSER_SHOTS=DIR to keep a screenshot of every page checked, VIGIL_BROWSER_VERBOSE=1
// to print every response (with the names of the cookies it sets) and the console.

import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const STEP_MS = 15_000;
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

class StepFailure extends Error {}

// The harness of one script run: `usage` is printed without a CONFIG argument; the whole run
// ends within `watchdogMs`.
export function harness(usage, watchdogMs) {
  const configPath = process.argv[2];
  if (!configPath) {
    console.error(`usage: ${usage}`);
    process.exit(2);
  }
  const config = JSON.parse(readFileSync(configPath, 'utf8'));
  const shots = process.env.VIGIL_BROWSER_SHOTS;
  const verbose = Boolean(process.env.VIGIL_BROWSER_VERBOSE);
  if (shots) mkdirSync(shots, { recursive: true });
  const started = Date.now();
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
  let current = 'start';
  let trace = [];
  let shot = 0;
  setTimeout(() => {
    console.error(`FAIL: watchdog: the browser test did not finish within ${watchdogMs} ms (step: ${current})`);
    process.exit(1);
  }, watchdogMs);

  const h = {
    config,
    base: config.base_url,
    issuer: config.issuer,
    // The page steps work on; `openAs` sets it, a script may switch back to an earlier one.
    page: null,

    check(condition, message) {
      if (!condition) throw new StepFailure(message);
    },

    async step(name, body) {
      current = name;
      const t = Date.now();
      await body();
      console.log(`ok   ${name} (${Date.now() - t} ms)`);
    },

    async text() {
      try {
        return (await h.page.locator('body').innerText({ timeout: 2_000 })).trim();
      } catch (e) {
        return `(no page text: ${e.message.split('\n')[0]})`;
      }
    },

    async screenshot(label) {
      if (!shots || !h.page) return;
      shot += 1;
      const file = join(shots, `${String(shot).padStart(2, '0')}-${label.replace(/[^a-z0-9]+/gi, '-')}.png`);
      await h.page.screenshot({ path: file, fullPage: true }).catch(() => {});
    },

    async launch() {
      const browser = await chromium.launch({
        executablePath: config.chromium,
        headless: true,
        args: FLAGS,
        timeout: STEP_MS,
      });
      console.log(`chromium ${browser.version()}`);
      return browser;
    },

    // A fresh context that presents `who`'s device certificate to Vigil's origin; its page
    // becomes the current one.
    async openAs(browser, who) {
      const context = await browser.newContext({
        clientCertificates: [{ origin: h.base, certPath: who.cert, keyPath: who.key }],
        ignoreHTTPSErrors: false,
      });
      context.setDefaultTimeout(STEP_MS);
      context.setDefaultNavigationTimeout(STEP_MS);
      const page = await context.newPage();
      h.page = page;
      trace = [];
      page.on('response', async (r) => {
        if (r.request().isNavigationRequest() && r.frame() === page.mainFrame()) {
          trace.push(`${r.request().method()} ${r.status()} ${r.url()}`);
        }
        if (verbose) {
          const cookies = (await r.headerValue('set-cookie').catch(() => null) ?? '').split('\n').filter(Boolean);
          const names = cookies.map((c) => c.split(';')[0].split('=')[0] + (/max-age=0/i.test(c) ? ' (cleared)' : ''));
          console.log(`  ${r.request().method()} ${r.status()} ${r.url()}${names.length ? ` set-cookie: ${names.join(', ')}` : ''}`);
        }
      });
      if (verbose) {
        page.on('console', (m) => console.log(`  console.${m.type()}: ${m.text()} ${m.location().url ?? ''}`));
        page.on('requestfailed', (r) => console.log(`  failed: ${r.url()} ${r.failure()?.errorText}`));
      }
      return { context, page };
    },

    // The status of the last main-frame navigation response.
    lastStatus() {
      const last = trace[trace.length - 1] ?? '';
      return Number(last.split(' ')[1]);
    },

    // Checks that the page is the provider's login form.
    async expectLoginForm(where) {
      h.check(
        h.page.url().startsWith(`${h.issuer}/interaction/`),
        `${where}: expected the provider's login form at ${h.issuer}/interaction/..., got ${h.page.url()}`,
      );
      h.check(await h.page.locator('form#login').isVisible(), `${where}: no login form (#login) on the page`);
      await h.screenshot(`${where}-login-form`);
    },

    // From the provider's login form: signs in as `who` and waits to be back on Vigil's
    // origin at a URL `back` accepts.
    async signIn(who, back) {
      await h.page.fill('#username', who.user);
      await h.page.fill('#password', who.password);
      await Promise.all([
        h.page.waitForURL((u) => u.origin === h.base && back(u), { waitUntil: 'load' }),
        h.page.click('#submit'),
      ]);
    },

    // Runs `main`, prints PASS or the failure, and exits 0 or 1.
    async run(main) {
      let code = 0;
      try {
        await main();
        console.log(`PASS: every browser step passed in ${elapsed()}`);
      } catch (e) {
        code = 1;
        console.error(`FAIL at step "${current}" after ${elapsed()}: ${e instanceof StepFailure ? e.message : e.stack}`);
        if (h.page) {
          console.error(`page url: ${h.page.url()}`);
          console.error(`navigations:\n  ${trace.join('\n  ') || '(none)'}`);
          console.error(`page text:\n${await h.text()}`);
          await h.screenshot('failure');
        }
      }
      process.exit(code);
    },
  };
  return h;
}

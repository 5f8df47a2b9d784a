// A real browser against Vigil: Debian's chromium driven by playwright-core.
//
//   node tests/browser/login.mjs CONFIG.json
//
// CONFIG.json (written by tests/browser.rs):
//   { "base_url": "https://localhost:PORT", "issuer": "http://127.0.0.1:PORT",
//     "chromium": "/usr/bin/chromium", "ca": "ca.pem",
//     "no_mfa": { "user": "bob", "password": "...", "email": "bob@example.com",
//                 "cert": "bob-laptop.pem", "key": "bob-laptop.key" },
//     "mfa":    { "user": "alice", ... } }
//
// The device certificate is presented by Playwright (`clientCertificates`): TLS to Vigil ends
// inside this Node process, so NODE_EXTRA_CA_CERTS must name the test CA before node starts.
// A TLS failure there shows up as a 503 page, not as an exception: every step asserts on the
// status and the text of the page it ends on.
//
// Prints what it does; exits 0 when every step passed, 1 otherwise (with the failing step, the
// navigations that led there and the text of the page). Set VIGIL_BROWSER_SHOTS=DIR to keep a
// screenshot of every page checked, VIGIL_BROWSER_VERBOSE=1 to print every response (with the
// names of the cookies it sets) and the console.

import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const WATCHDOG_MS = 75_000;
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

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node login.mjs CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const base = config.base_url;
const issuer = config.issuer;
const shots = process.env.VIGIL_BROWSER_SHOTS;
const verbose = Boolean(process.env.VIGIL_BROWSER_VERBOSE);
if (shots) mkdirSync(shots, { recursive: true });

const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;

// Whatever happens, this process ends within WATCHDOG_MS.
setTimeout(() => {
  console.error(`FAIL: watchdog: the browser test did not finish within ${WATCHDOG_MS} ms (step: ${current})`);
  process.exit(1);
}, WATCHDOG_MS);

class StepFailure extends Error {}

let current = 'start';
let page = null;
let trace = [];
let shot = 0;

function check(condition, message) {
  if (!condition) throw new StepFailure(message);
}

async function step(name, body) {
  current = name;
  const t = Date.now();
  await body();
  console.log(`ok   ${name} (${Date.now() - t} ms)`);
}

async function text() {
  try {
    return (await page.locator('body').innerText({ timeout: 2_000 })).trim();
  } catch (e) {
    return `(no page text: ${e.message.split('\n')[0]})`;
  }
}

async function screenshot(label) {
  if (!shots || !page) return;
  shot += 1;
  const file = join(shots, `${String(shot).padStart(2, '0')}-${label.replace(/[^a-z0-9]+/gi, '-')}.png`);
  await page.screenshot({ path: file, fullPage: true }).catch(() => {});
}

// A fresh context that presents `who`'s device certificate to Vigil's origin, and its page.
async function openAs(browser, who) {
  const context = await browser.newContext({
    clientCertificates: [{ origin: base, certPath: who.cert, keyPath: who.key }],
    ignoreHTTPSErrors: false,
  });
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
  page = await context.newPage();
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
  return context;
}

// The status of the last main-frame navigation response.
function lastStatus() {
  const last = trace[trace.length - 1] ?? '';
  return Number(last.split(' ')[1]);
}

async function expectLoginForm(where) {
  check(
    page.url().startsWith(`${issuer}/interaction/`),
    `${where}: expected the provider's login form at ${issuer}/interaction/..., got ${page.url()}`,
  );
  check(await page.locator('form#login').isVisible(), `${where}: no login form (#login) on the page`);
  await screenshot(`${where}-login-form`);
}

// From the provider's login form: signs in and waits to be back on Vigil's origin.
async function signIn(who) {
  await page.fill('#username', who.user);
  await page.fill('#password', who.password);
  await Promise.all([
    page.waitForURL((u) => u.origin === base && !u.pathname.startsWith('/.vigil/'), {
      waitUntil: 'load',
    }),
    page.click('#submit'),
  ]);
}

async function expectUpstreamPage(who, path) {
  const body = await text();
  check(lastStatus() === 200, `expected 200 from the upstream, got ${lastStatus()}`);
  check(new URL(page.url()).pathname === path, `expected to be at ${path}, got ${page.url()}`);
  check(
    body.includes(`x-vigil-email: ${who.email}`),
    `the upstream page does not show x-vigil-email: ${who.email}`,
  );
  await screenshot(`upstream-${who.user}${path}`);
}

async function sessionCookies(context) {
  return (await context.cookies(base)).filter((c) => c.name.startsWith('__Host-vigil-session'));
}

async function main() {
  let browser;
  await step('launch chromium', async () => {
    browser = await chromium.launch({
      executablePath: config.chromium,
      headless: true,
      args: FLAGS,
      timeout: STEP_MS,
    });
    console.log(`chromium ${browser.version()}`);
  });

  // Bob: password only, no MFA.
  const bob = config.no_mfa;
  let context = await openAs(browser, bob);

  await step(`${bob.user}: / goes to the provider's login form`, async () => {
    await page.goto(`${base}/`);
    await expectLoginForm('first visit');
  });

  await step(`${bob.user}: signs in and lands on the upstream page`, async () => {
    await signIn(bob);
    await expectUpstreamPage(bob, '/');
    const cookies = await sessionCookies(context);
    check(cookies.length > 0, 'no __Host-vigil-session cookie after the login');
    for (const c of cookies) {
      check(c.secure && c.httpOnly && c.path === '/', `session cookie attributes: ${JSON.stringify(c)}`);
    }
  });

  await step(`${bob.user}: /admin/x (mfa = true) is denied with a readable page`, async () => {
    const response = await page.goto(`${base}/admin/x`);
    check(response !== null, 'no response');
    check(response.status() === 403, `expected 403, got ${response.status()}`);
    const type = response.headers()['content-type'] ?? '';
    check(type.startsWith('text/html'), `expected an HTML page, got content-type ${type}`);
    const id = response.headers()['x-request-id'];
    check(id, 'no x-request-id header on the denial');
    const body = await text();
    check(/access denied/i.test(body), 'the page does not say "access denied"');
    check(body.includes(id), `the page does not show the request id ${id}`);
    await screenshot('bob-admin-denied');
  });

  await step(`${bob.user}: logs out through Vigil and the provider`, async () => {
    const response = await page.goto(`${base}/.vigil/logout`);
    check(response?.status() === 200, `logout page: expected 200, got ${response?.status()}`);
    check((await text()).includes(bob.email), `the logout page does not name ${bob.email}`);
    await screenshot('vigil-logout');
    await Promise.all([
      page.waitForURL((u) => u.href.startsWith(`${issuer}/session/end`), { waitUntil: 'load' }),
      page.click('#sign-out'),
    ]);
    check(await page.locator('#logout').isVisible(), "no #logout button on the provider's page");
    await screenshot('provider-logout');
    await Promise.all([
      page.waitForURL(`${base}/.vigil/logged-out`, { waitUntil: 'load' }),
      page.click('#logout'),
    ]);
    check(lastStatus() === 200, `logged-out page: expected 200, got ${lastStatus()}`);
    check((await text()).includes('You are signed out'), 'the page does not say "You are signed out"');
    await screenshot('logged-out');
    const left = await sessionCookies(context);
    check(left.length === 0, `session cookies left after logout: ${left.map((c) => c.name).join(', ')}`);
  });

  await step(`${bob.user}: / after logout needs a new login`, async () => {
    await page.goto(`${base}/`);
    await expectLoginForm('after logout');
  });
  await context.close();

  // Alice: password and OTP (amr), in a fresh context.
  const alice = config.mfa;
  context = await openAs(browser, alice);

  await step(`${alice.user}: signs in and lands on the upstream page`, async () => {
    await page.goto(`${base}/`);
    await expectLoginForm('alice first visit');
    await signIn(alice);
    await expectUpstreamPage(alice, '/');
  });

  await step(`${alice.user}: /admin/x (mfa = true) is allowed`, async () => {
    const response = await page.goto(`${base}/admin/x`);
    check(response?.status() === 200, `expected 200, got ${response?.status()}`);
    await expectUpstreamPage(alice, '/admin/x');
  });
  await context.close();
  await browser.close();
}

let code = 0;
try {
  await main();
  console.log(`PASS: every browser step passed in ${elapsed()}`);
} catch (e) {
  code = 1;
  console.error(`FAIL at step "${current}" after ${elapsed()}: ${e instanceof StepFailure ? e.message : e.stack}`);
  if (page) {
    console.error(`page url: ${page.url()}`);
    console.error(`navigations:\n  ${trace.join('\n  ') || '(none)'}`);
    console.error(`page text:\n${await text()}`);
    await screenshot('failure');
  }
}
process.exit(code);

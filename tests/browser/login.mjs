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
// A TLS failure shows up as a 503 page, not as an exception: every step asserts on the
// status and the text of the page it ends on. Prints what it does; exits 0 when every step
// passed, 1 otherwise (see harness.mjs).

import { harness } from './harness.mjs';

const h = harness('node login.mjs CONFIG.json', 75_000);
const { base, issuer } = h;

async function expectUpstreamPage(who, path) {
  const body = await h.text();
  h.check(h.lastStatus() === 200, `expected 200 from the upstream, got ${h.lastStatus()}`);
  h.check(new URL(h.page.url()).pathname === path, `expected to be at ${path}, got ${h.page.url()}`);
  h.check(
    body.includes(`x-vigil-email: ${who.email}`),
    `the upstream page does not show x-vigil-email: ${who.email}`,
  );
  await h.screenshot(`upstream-${who.user}${path}`);
}

async function sessionCookies(context) {
  return (await context.cookies(base)).filter((c) => c.name.startsWith('__Host-vigil-session'));
}

async function main() {
  let browser;
  await h.step('launch chromium', async () => {
    browser = await h.launch();
  });

  // Bob: password only, no MFA.
  const bob = h.config.no_mfa;
  let { context } = await h.openAs(browser, bob);

  await h.step(`${bob.user}: / goes to the provider's login form`, async () => {
    await h.page.goto(`${base}/`);
    await h.expectLoginForm('first visit');
  });

  await h.step(`${bob.user}: signs in and lands on the upstream page`, async () => {
    await h.signIn(bob, (u) => !u.pathname.startsWith('/.vigil/'));
    await expectUpstreamPage(bob, '/');
    const cookies = await sessionCookies(context);
    h.check(cookies.length > 0, 'no __Host-vigil-session cookie after the login');
    for (const c of cookies) {
      h.check(c.secure && c.httpOnly && c.path === '/', `session cookie attributes: ${JSON.stringify(c)}`);
    }
  });

  await h.step(`${bob.user}: /admin/x (mfa = true) is denied with a readable page`, async () => {
    const response = await h.page.goto(`${base}/admin/x`);
    h.check(response !== null, 'no response');
    h.check(response.status() === 403, `expected 403, got ${response.status()}`);
    const type = response.headers()['content-type'] ?? '';
    h.check(type.startsWith('text/html'), `expected an HTML page, got content-type ${type}`);
    const id = response.headers()['x-request-id'];
    h.check(id, 'no x-request-id header on the denial');
    const body = await h.text();
    h.check(/access denied/i.test(body), 'the page does not say "access denied"');
    h.check(body.includes(id), `the page does not show the request id ${id}`);
    await h.screenshot('bob-admin-denied');
  });

  await h.step(`${bob.user}: logs out through Vigil and the provider`, async () => {
    const response = await h.page.goto(`${base}/.vigil/logout`);
    h.check(response?.status() === 200, `logout page: expected 200, got ${response?.status()}`);
    h.check((await h.text()).includes(bob.email), `the logout page does not name ${bob.email}`);
    await h.screenshot('vigil-logout');
    await Promise.all([
      h.page.waitForURL((u) => u.href.startsWith(`${issuer}/session/end`), { waitUntil: 'load' }),
      h.page.click('#sign-out'),
    ]);
    h.check(await h.page.locator('#logout').isVisible(), "no #logout button on the provider's page");
    await h.screenshot('provider-logout');
    await Promise.all([
      h.page.waitForURL(`${base}/.vigil/logged-out`, { waitUntil: 'load' }),
      h.page.click('#logout'),
    ]);
    h.check(h.lastStatus() === 200, `logged-out page: expected 200, got ${h.lastStatus()}`);
    h.check((await h.text()).includes('You are signed out'), 'the page does not say "You are signed out"');
    await h.screenshot('logged-out');
    const left = await sessionCookies(context);
    h.check(left.length === 0, `session cookies left after logout: ${left.map((c) => c.name).join(', ')}`);
  });

  await h.step(`${bob.user}: / after logout needs a new login`, async () => {
    await h.page.goto(`${base}/`);
    await h.expectLoginForm('after logout');
  });
  await context.close();

  // Alice: password and OTP (amr), in a fresh context.
  const alice = h.config.mfa;
  ({ context } = await h.openAs(browser, alice));

  await h.step(`${alice.user}: signs in and lands on the upstream page`, async () => {
    await h.page.goto(`${base}/`);
    await h.expectLoginForm('alice first visit');
    await h.signIn(alice, (u) => !u.pathname.startsWith('/.vigil/'));
    await expectUpstreamPage(alice, '/');
  });

  await h.step(`${alice.user}: /admin/x (mfa = true) is allowed`, async () => {
    const response = await h.page.goto(`${base}/admin/x`);
    h.check(response?.status() === 200, `expected 200, got ${response?.status()}`);
    await expectUpstreamPage(alice, '/admin/x');
  });
  await context.close();
  await browser.close();
}

await h.run(main);

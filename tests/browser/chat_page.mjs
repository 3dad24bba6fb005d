// Drives the chat page in the system Chromium (playwright-core never downloads a browser).
// Usage: node chat_page.mjs <gateway url> <token> <screenshot path>
// Prints one JSON object for the pytest side; exits non-zero with a message on failure.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, token, screenshotPath] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const FLAGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const profile = mkdtempSync(join(tmpdir(), "tollgate-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: FLAGS,
  viewport: { width: 1000, height: 760 },
  colorScheme: "light",
});
const problems = [];

try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  page.on("response", (response) => {
    if (response.status() >= 400) problems.push(`${response.status()} from ${response.url()}`);
  });

  await page.goto(`${url}/#token=${token}`);
  await page.waitForFunction(() => document.getElementById("budget-tokens").textContent !== "–");
  assert.equal(new URL(page.url()).hash, "", "the token is cleared from the address bar");
  assert.equal(await page.evaluate(() => localStorage.getItem("tollgate.token")), token);
  const tokensBefore = await page.textContent("#budget-tokens");

  const assistant = (index) => page.locator("article.message.assistant").nth(index);
  const bubbleLength = async (index) => ((await assistant(index).locator(".bubble").textContent()) ?? "").length;

  const firstResponse = page.waitForResponse((response) => response.url().endsWith("/chat"));
  await page.fill("#message", "Tell me how a toll road pays for itself");
  await page.click("#send");
  const firstRequestId = (await firstResponse).headers()["x-request-id"];
  await assistant(0).waitFor();
  const lengths = [];
  while ((await assistant(0).getAttribute("aria-busy")) === "true") {
    lengths.push(await bubbleLength(0));
    await sleep(150);
  }
  const growth = new Set(lengths.filter((length) => length > 0));
  assert.ok(growth.size >= 3, `the reply grew token by token: ${JSON.stringify(lengths)}`);
  for (let i = 1; i < lengths.length; i++) assert.ok(lengths[i] >= lengths[i - 1], "text only grows");

  await page.waitForFunction(() => document.querySelector("article.message.assistant .meta").textContent.includes("$"));
  const firstMeta = await assistant(0).locator(".meta").textContent();
  const firstReply = await assistant(0).locator(".bubble").textContent();
  const tokensAfter = await page.textContent("#budget-tokens");
  const budgetDetail = await page.textContent("#budget-detail");
  assert.notEqual(tokensAfter, tokensBefore, "the budget updated after the reply");
  const conversation = await page.textContent("#conversation");
  assert.match(conversation, /Conversation \w+/);

  const secondResponse = page.waitForResponse((response) => response.url().endsWith("/chat"));
  await page.fill("#message", "And who sets the prices?");
  await page.press("#message", "Enter");
  const stoppedRequestId = (await secondResponse).headers()["x-request-id"];
  await page.waitForFunction(() => {
    const bubbles = document.querySelectorAll("article.message.assistant .bubble");
    return bubbles.length === 2 && bubbles[1].textContent.length > 0;
  });
  await page.click("#stop");
  await page.locator("article.message.assistant").nth(1).locator(".note.stopped").waitFor();
  const stoppedLength = await bubbleLength(1);
  await sleep(1000);
  assert.equal(await bubbleLength(1), stoppedLength, "no text arrives after Stop");
  assert.equal(await page.isVisible("#send"), true, "Send is back after Stop");
  const stoppedMeta = await assistant(1).locator(".meta").textContent();

  await page.fill("#message", "");
  await page.screenshot({ path: screenshotPath, fullPage: false });
  assert.deepEqual(problems, []);

  await page.click("#token-panel summary");
  await page.fill("#token", "not-a-valid-token");
  await page.click("#token-form button[type=submit]");
  await page.fill("#message", "Anyone there?");
  await page.click("#send");
  await page.waitForFunction(() => document.getElementById("alert").textContent.includes("Not signed in"));
  assert.equal(await page.locator("article.message.assistant").count(), 2, "no reply bubble for a refusal");
  assert.equal(await page.isVisible("#send"), true);
  process.stdout.write(JSON.stringify({
    firstRequestId, stoppedRequestId, lengths, firstMeta, firstReply, stoppedMeta,
    stoppedLength, tokensBefore, tokensAfter, budgetDetail, conversation,
  }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

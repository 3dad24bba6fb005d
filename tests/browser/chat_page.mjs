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

// The offline model only writes prose, so the Markdown turn is answered here, in the gateway's
// SSE format, with HTML that would run if the page ever parsed reply text as HTML.
const HOSTILE_DELTAS = [
  "## Paying for the road\n\nTolls cover **upkeep** and *interest*:\n\n",
  "1. Count the cars\n2. Charge each one\n\n",
  "<scr", "ipt>window.__scriptRan = true</script>\n\n",
  '<img src=x onerror="window.__imageRan = true"> and ',
  '<a href="javascript:window.__anchorRan = true">a raw anchor</a>\n\n',
  "```python\n", "def toll(cars):\n    return cars * 2  # <b>not bold</b>\n", "```\n\n",
  "Read [the report](https://example.com/roads?a=1&b=2), not [this](javascript:window.__linkRan=true).",
];
const HOSTILE_CODE = "def toll(cars):\n    return cars * 2  # <b>not bold</b>";

function sseBody(events) {
  return events.map(([name, data]) => (name === null ? data : `event: ${name}\ndata: ${data}`) + "\n\n").join("");
}
const profile = mkdtempSync(join(tmpdir(), "tollgate-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: FLAGS,
  viewport: { width: 1000, height: 1140 },
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
  assert.equal(await assistant(0).locator(".bubble > p").count(), 1, "a prose reply is one paragraph");

  const budget = await (await context.request.get(`${url}/usage`, { headers: { Authorization: `Bearer ${token}` } })).json();
  const conversationId = conversation.replace("Conversation ", "").trim();
  await page.route((target) => target.pathname === "/chat", async (route) => {
    assert.equal(route.request().postDataJSON().conversation_id, conversationId);
    const usage = { input_tokens: 30, cached_input_tokens: 0, output_tokens: 96, reasoning_tokens: 0, cost_usd: 0.000062, budget };
    await route.fulfill({
      headers: { "Content-Type": "text/event-stream", "X-Request-Id": "markdown-turn" },
      body: sseBody([
        ["meta", JSON.stringify({ conversation_id: conversationId, request_id: "markdown-turn", model: "gpt-4o-mini" })],
        [null, ": keep-alive"],
        ...HOSTILE_DELTAS.map((delta) => [null, `data: ${JSON.stringify({ delta })}`]),
        ["usage", JSON.stringify(usage)],
        [null, "data: [DONE]"],
      ]),
    });
  }, { times: 1 });
  await page.fill("#message", "How does a toll road pay for itself? Show me the code.");
  await page.click("#send");
  await assistant(1).locator(".meta").filter({ hasText: "$" }).waitFor();
  await page.waitForFunction(() => !document.querySelector("article.message.assistant[aria-busy]"));
  const markdownBubble = assistant(1).locator(".bubble");
  const markdown = await page.evaluate(() => ({
    ran: [window.__scriptRan, window.__imageRan, window.__anchorRan, window.__linkRan].filter(Boolean).length,
    images: document.querySelectorAll("#log img").length,
    scripts: document.querySelectorAll("#log script").length,
    links: [...document.querySelectorAll("#log a")].map((a) => ({ href: a.getAttribute("href"), target: a.target, rel: a.rel, text: a.textContent })),
  }));
  assert.equal(markdown.ran, 0, "no HTML from the reply ran");
  assert.equal(markdown.images, 0, "no <img> from the reply");
  assert.equal(markdown.scripts, 0, "no <script> from the reply");
  assert.deepEqual(markdown.links, [
    { href: "https://example.com/roads?a=1&b=2", target: "_blank", rel: "noopener noreferrer", text: "the report" },
  ]);
  markdown.code = await markdownBubble.locator("pre > code.language-python").textContent();
  assert.equal(markdown.code, HOSTILE_CODE, "the code block keeps its text, tags included");
  assert.equal(await markdownBubble.locator("h4").textContent(), "Paying for the road");
  assert.equal(await markdownBubble.locator("strong").textContent(), "upkeep");
  assert.equal(await markdownBubble.locator("em").textContent(), "interest");
  assert.deepEqual(await markdownBubble.locator("ol > li").allTextContents(), ["Count the cars", "Charge each one"]);
  markdown.text = await markdownBubble.textContent();
  for (const shown of ["<script>window.__scriptRan = true</script>", '<img src=x onerror="window.__imageRan = true">',
    "[this](javascript:window.__linkRan=true)"]) {
    assert.ok(markdown.text.includes(shown), `shown as text: ${shown}`);
  }

  const secondResponse = page.waitForResponse((response) => response.url().endsWith("/chat"));
  await page.fill("#message", "And who sets the prices?");
  await page.press("#message", "Enter");
  const stoppedRequestId = (await secondResponse).headers()["x-request-id"];
  await page.waitForFunction(() => {
    const bubbles = document.querySelectorAll("article.message.assistant .bubble");
    return bubbles.length === 3 && bubbles[2].textContent.length > 0;
  });
  await page.click("#stop");
  await assistant(2).locator(".note.stopped").waitFor();
  const stoppedLength = await bubbleLength(2);
  await sleep(1000);
  assert.equal(await bubbleLength(2), stoppedLength, "no text arrives after Stop");
  assert.equal(await page.isVisible("#send"), true, "Send is back after Stop");
  const stoppedMeta = await assistant(2).locator(".meta").textContent();

  await page.fill("#message", "");
  await page.screenshot({ path: screenshotPath, fullPage: false });
  assert.deepEqual(problems, []);

  await page.click("#token-panel summary");
  await page.fill("#token", "not-a-valid-token");
  await page.click("#token-form button[type=submit]");
  await page.fill("#message", "Anyone there?");
  await page.click("#send");
  await page.waitForFunction(() => document.getElementById("alert").textContent.includes("Not signed in"));
  assert.equal(await page.locator("article.message.assistant").count(), 3, "no reply bubble for a refusal");
  assert.equal(await page.isVisible("#send"), true);
  process.stdout.write(JSON.stringify({
    firstRequestId, stoppedRequestId, lengths, firstMeta, firstReply, stoppedMeta,
    stoppedLength, tokensBefore, tokensAfter, budgetDetail, conversation, markdown,
  }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

// The chat page of `specula serve` (GET /) in headless Chromium, driven through playwright-core
// (ctest web.chat_page). Starts `specula serve` on a free port with the demo model, opens the page
// and checks what a user sees: the model's name; a message answered with text that grows while
// it streams (sampled during the answer), a live tokens/s figure, then the server's figures from
// the "specula" extension object; and Stop: the answer stops growing, the page says "stopped",
// and the server cancels the generation (its scheduler counts a cancel, not a completion).
//
// Needs the Debian chromium package (/usr/bin/chromium) and tests/web/node_modules (npm ci);
// scripts/setup.sh installs both. Either missing is a failure that says so, never a skip.
// `npx playwright install` (a downloaded browser) is neither needed nor used.
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const chromiumPath = process.env.SPECULA_CHROMIUM || "/usr/bin/chromium";
const cli = process.env.SPECULA_CLI;

function fail(message) {
  console.error("web.chat_page: FAILED: " + message);
  process.exitCode = 1;
  throw new Error(message);
}
function check(condition, message) {
  if (!condition) fail(message);
  console.log("ok - " + message);
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

async function httpGet(port, route) {
  const r = await fetch(`http://127.0.0.1:${port}${route}`);
  return { status: r.status, text: await r.text() };
}

function metric(text, name) {
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? NaN : Number(line.slice(name.length + 1));
}

async function main() {
  if (!cli || !fs.existsSync(cli)) fail(`SPECULA_CLI must name the built specula program (got '${cli}')`);
  if (!fs.existsSync(chromiumPath))
    fail(`${chromiumPath} is missing: install the Debian package chromium (scripts/setup.sh does)`);
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch (e) {
    fail(`playwright-core is not installed in ${path.join(here, "node_modules")}: run scripts/setup.sh ` +
         `(it runs 'npm ci' in tests/web) -- ${e.message}`);
  }

  const work = fs.mkdtempSync(path.join(os.tmpdir(), "specula-web-"));
  const modelDir = path.join(work, "demo-model");
  const made = spawnSync(cli, ["create-demo-model", modelDir], { encoding: "utf8" });
  if (made.status !== 0) fail("create-demo-model failed: " + made.stderr);
  const port = await freePort();
  const server = spawn(cli, ["serve", "-m", modelDir, "--device", "cpu", "--threads", "1", "--port", String(port)],
                       { stdio: ["ignore", "inherit", "inherit"] });
  let browser;
  try {
    let ready = false;
    for (let i = 0; i < 200 && !ready; ++i) {
      try {
        ready = (await httpGet(port, "/health")).status === 200;
      } catch {
        await sleep(50);
      }
    }
    if (!ready) fail("specula serve did not answer /health within 10 s");

    browser = await chromium.launchPersistentContext(path.join(work, "profile"), {
      executablePath: chromiumPath,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const page = browser.pages()[0] || (await browser.newPage());
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForFunction((id) => document.getElementById("model").textContent === id, "demo-model",
                               { timeout: 10000 });
    check(true, "the page lists the model");

    // Greedy, long enough to be seen streaming (the demo model makes ~700 tokens/s on one core).
    await page.evaluate(() => {
      document.getElementById("temperature").value = "0";
      document.getElementById("max-tokens").value = "1200";
    });
    await page.fill("#prompt", "Tell me a story.");
    await page.click("#send");
    const lengths = [];
    let liveFigure = "";
    const start = Date.now();
    for (;;) {
      const s = await page.evaluate(() => {
        const answers = document.querySelectorAll(".msg.assistant");
        const last = answers[answers.length - 1];
        return last ? { text: last.querySelector(".text").textContent.length,
                        stats: last.querySelector(".stats").textContent,
                        final: last.querySelector(".stats").dataset.final === "1" } : null;
      });
      if (s) {
        if (!s.final) {
          lengths.push(s.text);
          if (s.stats.includes("tok/s")) liveFigure = s.stats;
        }
        if (s.final) break;
      }
      if (Date.now() - start > 60000) fail("the answer did not finish within 60 s");
      await sleep(20);
    }
    const growing = lengths.filter((n, i) => i > 0 && n > lengths[i - 1]).length;
    check(growing >= 3, `the answer's text grew while it streamed (${growing} increases over ${lengths.length} samples)`);
    check(liveFigure !== "", `a live tokens/s figure showed while streaming ('${liveFigure}')`);
    const stats = await page.textContent(".msg.assistant .stats");
    check(/tokens · [0-9.]+ tok\/s decode · [0-9]+ tok\/s prefill/.test(stats) && stats.includes("dense attention"),
          `the server's figures appeared after the answer ('${stats}')`);
    const answer = await page.textContent(".msg.assistant .text");
    check(answer.length > 0, "the answer has text");
    check(await page.isEnabled("#send") && !(await page.isEnabled("#stop")), "Send is enabled again, Stop is not");

    // Stop: a fresh conversation, a long answer stopped once it streams.
    let metrics = (await httpGet(port, "/metrics")).text;
    const cancelledBefore = metric(metrics, 'specula_scheduler_requests_total{outcome="cancelled"}');
    const completedBefore = metric(metrics, 'specula_scheduler_requests_total{outcome="completed"}');
    await page.click("#reset");
    await page.evaluate(() => { document.getElementById("max-tokens").value = "1900"; });
    await page.fill("#prompt", "Another one.");
    // Stop is pressed from inside the page as soon as 20 characters have streamed in (a
    // MutationObserver runs before the page handles the next chunk), so a fast or a loaded machine
    // cannot finish the answer between the test seeing the text and its click arriving.
    await page.evaluate(() => {
      const observer = new MutationObserver(() => {
        const t = document.querySelector(".msg.assistant .text");
        if (t && t.textContent.length > 20) {
          observer.disconnect();
          document.getElementById("stop").click();
        }
      });
      observer.observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
    });
    await page.click("#send");
    await page.waitForFunction(() => document.getElementById("status").textContent === "stopped", null,
                               { timeout: 5000 });
    const stoppedLength = (await page.textContent(".msg.assistant .text")).length;
    await sleep(300);
    check((await page.textContent(".msg.assistant .text")).length === stoppedLength,
          "the answer stops growing after Stop");
    check((await page.textContent(".msg.assistant .stats")).includes("stopped"), "the answer is marked stopped");
    let cancelled = false;
    for (let i = 0; i < 100 && !cancelled; ++i) {
      metrics = (await httpGet(port, "/metrics")).text;
      cancelled = metric(metrics, 'specula_scheduler_requests_total{outcome="cancelled"}') === cancelledBefore + 1;
      if (!cancelled) await sleep(20);
    }
    check(cancelled, "the server cancelled the stopped generation");
    check(metric(metrics, 'specula_scheduler_requests_total{outcome="completed"}') === completedBefore,
          "the stopped generation did not run to completion");
    check(pageErrors.length === 0, "no script errors on the page" + (pageErrors.length ? ": " + pageErrors.join("; ") : ""));
  } finally {
    if (browser) await browser.close().catch(() => {});
    server.kill("SIGTERM");
    await new Promise((resolve) => (server.exitCode !== null ? resolve() : server.on("exit", resolve)));
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().then(
  () => console.log("web.chat_page: all checks passed"),
  (e) => {
    if (process.exitCode !== 1) console.error("web.chat_page: FAILED: " + (e && e.stack ? e.stack : e));
    process.exitCode = 1;
  });

// `keel playground` in a real browser: headless Chromium (Debian's `chromium` package) driven by
// puppeteer-core. Run by test.sh:
//   (cd host/tests/playground && KEEL_BIN=../../../target/debug/keel node --test playground.test.mjs)
// KEEL_BIN is a keel built with `--features playground`; CHROMIUM overrides the browser's path.
// The screenshot is kept as an artifact in target/playground/ (KEEL_PLAYGROUND_OUT overrides).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import puppeteer from "puppeteer-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..", "..");
const keelBin = process.env.KEEL_BIN ? resolve(process.env.KEEL_BIN) : join(root, "target/debug/keel");
const chromium = process.env.CHROMIUM ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].find(existsSync);
const out = resolve(root, process.env.KEEL_PLAYGROUND_OUT ?? "target/playground");
const fixture = readFileSync(join(root, "policies/fixtures/arm-error-artifact-version-not-found-2021-10-13.json"), "utf8");

let server;
let base;
let browser;

before(async () => {
  assert.ok(existsSync(keelBin), `${keelBin} is missing: cargo build -p keel-host --features playground`);
  assert.ok(chromium, "no Chromium: apt-get install chromium (or set CHROMIUM)");
  mkdirSync(out, { recursive: true });
  server = spawn(keelBin, ["playground", "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  server.stderr.on("data", (d) => (stderr += d));
  base = await new Promise((ok, fail) => {
    let text = "";
    const timer = setTimeout(() => fail(new Error(`keel playground printed no address: ${text}${stderr}`)), 20000);
    server.stdout.on("data", (d) => {
      text += d;
      const m = text.match(/http:\/\/127\.0\.0\.1:\d+\//);
      if (m) {
        clearTimeout(timer);
        ok(m[0]);
      }
    });
    server.on("exit", (code) => fail(new Error(`keel playground exited (${code}): ${stderr}`)));
  });
  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    defaultViewport: { width: 1600, height: 1000 },
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGINT");
});

/** A fresh page on the playground, with the engine loaded; page errors fail the test. */
async function open() {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  await page.goto(base, { waitUntil: "load" });
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("decided"), { timeout: 30000 });
  return { page, errors };
}

/** Replaces the value of the field `id` as if typed, firing `input`. */
async function setValue(page, id, value) {
  await page.$eval(
    `#${id}`,
    (el, v) => {
      el.value = v;
      el.dispatchEvent(new Event("input", { bubbles: true }));
      el.dispatchEvent(new Event("change", { bubbles: true }));
    },
    value,
  );
}

const text = (page, id) => page.$eval(`#${id}`, (el) => el.textContent);

test("the 2021-10-13 ARM error for a Windows VM decides retry_without_agent in the page", async () => {
  const { page, errors } = await open();
  await page.click('input[name="input-kind"][value="payload"]');
  await page.select("#source", "azure.arm");
  await page.select("#operation", "create");
  await setValue(page, "observed-at", "2021-10-13T14:05:00Z");
  await setValue(page, "with", '{"resource": {"id": "web-1", "name": "web-1", "os": "windows", "region": "eastus"}}');
  await setValue(page, "now", "2021-10-13T14:05:03Z");
  // Pasted, as a user would.
  await page.click("#payload", { count: 3 });
  await page.$eval("#payload", (el) => {
    el.value = "";
  });
  await page.focus("#payload");
  await page.evaluate((t) => document.execCommand("insertText", false, t), fixture);
  await page.waitForFunction(() => document.getElementById("action").textContent === "retry_without_agent", { timeout: 10000 });
  assert.equal(await text(page, "policy"), "azure.vm-agent-missing.retry-without-agent");
  const events = JSON.parse(await text(page, "events"));
  assert.equal(events.length, 1);
  assert.equal(events[0].failure.code, "ArtifactVersionNotFound");
  assert.equal(events[0].resource.os, "windows");
  const won = await page.$$eval("#trace tr.won td", (tds) => tds.map((t) => t.textContent));
  assert.match(won.join(" "), /azure\.vm-agent-missing\.retry-without-agent/);
  // The same payload for a Linux VM is not retried without the agent.
  await setValue(page, "with", '{"resource": {"id": "db-1", "os": "linux", "region": "eastus"}}');
  await page.waitForFunction(() => document.getElementById("action").textContent !== "retry_without_agent", { timeout: 10000 });
  await setValue(page, "with", '{"resource": {"id": "web-1", "name": "web-1", "os": "windows", "region": "eastus"}}');
  await page.waitForFunction(() => document.getElementById("action").textContent === "retry_without_agent", { timeout: 10000 });
  await page.screenshot({ path: join(out, "playground.png") });
  // Copy as test case: a case for what is on screen.
  await page.click("#copy-test");
  await page.waitForFunction(() => !document.getElementById("test-case").hidden);
  const testCase = await text(page, "test-case");
  assert.match(testCase, /^ {2}- name: ".* decides retry_without_agent"$/m);
  assert.match(testCase, /^ {6}action: retry_without_agent$/m);
  assert.match(testCase, /^ {6}policy: "azure\.vm-agent-missing\.retry-without-agent"$/m);
  assert.match(testCase, /^ {4}now: 2021-10-13T14:05:03Z$/m);
  assert.deepEqual(errors, []);
  await page.close();
});

test("a typo in a policy highlights its line and names it", async () => {
  const { page, errors } = await open();
  await page.select("#policy-file", "standard/azure/vm-agent.yaml");
  const yaml = await page.$eval("#editor", (el) => el.value);
  const at = yaml.indexOf("event.failure.category");
  assert.ok(at > 0, "the policy reads event.failure.category");
  const line = yaml.slice(0, at).split("\n").length;
  await setValue(page, "editor", yaml.replace("event.failure.category", "event.failure.categry"));
  await page.waitForSelector("#diagnostics li", { timeout: 10000 });
  const diags = await page.$$eval("#diagnostics li", (lis) => lis.map((l) => l.textContent));
  assert.ok(
    diags.some((d) => d.startsWith(`standard/azure/vm-agent.yaml:${line}:`) && d.includes("did you mean `category`")),
    diags.join("\n"),
  );
  const marked = await page.$$eval("#gutter span.error", (s) => s.map((x) => Number(x.dataset.line)));
  assert.deepEqual(marked, [line]);
  const shaded = await page.$$eval("#highlight span.error", (s) => s.map((x) => Number(x.dataset.line)));
  assert.deepEqual(shaded, [line]);
  assert.match(await text(page, "status"), /problem/);
  await page.screenshot({ path: join(out, "playground-diagnostic.png") });
  // Fixing it clears the diagnostic and decides again.
  await setValue(page, "editor", yaml);
  await page.waitForFunction(() => document.querySelectorAll("#diagnostics li").length === 0, { timeout: 10000 });
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("decided"), { timeout: 10000 });
  assert.deepEqual(errors, []);
  await page.close();
});

test("hostile text stays text: a policy name and a payload with markup are not rendered as HTML", async () => {
  const { page, errors } = await open();
  await page.select("#policy-file", "my-policies.yaml");
  const evil = `policies:\n  - name: "x<img src=x onerror=alert(1)>"\n    on: [operation_failure]\n    when: "true"\n    action: escalate\n    priority: 1000\n    reason: "<b>bold</b>"\n`;
  await setValue(page, "editor", evil);
  await page.waitForFunction(() => document.getElementById("status").textContent.length > 0, { timeout: 10000 });
  await new Promise((r) => setTimeout(r, 600));
  assert.equal(await page.$$eval("img", (i) => i.length), 0, "markup from a policy became an element");
  assert.equal(await page.$$eval("#output-pane b", (b) => b.length), 0);
  assert.deepEqual(errors, []);
  await page.close();
});

test("a vendor payload that is not one gives a typed error in the status, not a crash", async () => {
  const { page, errors } = await open();
  await page.click('input[name="input-kind"][value="payload"]');
  await page.select("#source", "azure.arm");
  await setValue(page, "payload", '{\n  "error": ');
  await page.waitForFunction(() => document.getElementById("status").classList.contains("error"), { timeout: 10000 });
  assert.match(await text(page, "status"), /invalid_payload: .*\(payload line 2/);
  assert.equal(await text(page, "action"), "–");
  assert.deepEqual(errors, []);
  await page.close();
});

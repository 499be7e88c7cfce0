// Drives a web bundle's own page in headless Chromium (playwright-core) and reports what happened.
//
// Usage: node browser_driver.mjs <job.json>   (job: see targets/web/verify_browser.py, BrowserJob)
// Prints one JSON object on stdout. Any page error, console error, failed request or request that
// leaves the server under test is recorded; the Python side turns them into failures.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { chromium } = await import(pathToFileURL(job.playwright).href);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "edgepack-chromium-"));
const origin = new URL(job.url).origin;
const problems = { pageErrors: [], consoleErrors: [], failedRequests: [], externalRequests: [] };
const result = { problems, runs: [] };

function watch(page) {
  page.on("pageerror", (err) => problems.pageErrors.push(String(err?.stack ?? err).slice(0, 2000)));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.consoleErrors.push(msg.text().slice(0, 2000));
  });
  page.on("requestfailed", (req) => problems.failedRequests.push(`${req.url()}: ${req.failure()?.errorText}`));
}

// Wait for the page's model (window.edgepack.ready) and return its info, or throw the page's error.
async function ready(page) {
  await page.waitForFunction(() => window.edgepack !== undefined, null, { timeout: job.timeoutMs });
  return page.evaluate(async () => {
    const model = await window.edgepack.ready;
    return {
      info: model.info,
      title: document.title,
      heading: document.getElementById("model-name")?.textContent ?? null,
      labels: [...document.querySelectorAll("code.label")].map((e) => e.textContent),
      injected: window.__edgepackInjected ?? null,
    };
  });
}

const context = await chromium.launchPersistentContext(profile, {
  executablePath: job.chromium,
  headless: true,
  args: job.args, // verify_browser.CHROMIUM_ARGS and the caller's extra flags
});
try {
  // Nothing may leave the server under test: a CDN request fails the run instead of being fetched.
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin) || url.startsWith("blob:") || url.startsWith("data:")) return route.continue();
    problems.externalRequests.push(url);
    return route.abort();
  });
  result.browserVersion = context.browser()?.version() ?? null;
  const page = context.pages()[0] ?? (await context.newPage());
  watch(page);
  for (let load = 0; load < job.loads; load++) {
    const started = Date.now();
    if (load === 0) await page.goto(job.url, { timeout: job.timeoutMs });
    else await page.reload({ timeout: job.timeoutMs });
    const loaded = await ready(page);
    const run = { ...loaded, pageLoadMs: Date.now() - started, generations: [] };
    for (const gen of load === 0 ? job.generations : []) {
      run.generations.push(
        await page.evaluate(async (g) => {
          const model = await window.edgepack.ready;
          if (g.run) {
            const r = await model.run(g.input, { instruction: g.instruction, ...g.options });
            return { ...r.generation, parsed: { ok: r.ok, value: r.value ?? null, error: r.error ?? null } };
          }
          const prompt = model.renderPrompt(g.input, g.instruction);
          return model.generate(prompt, g.options);
        }, gen),
      );
    }
    result.runs.push(run);
  }
  if (job.screenshot) await page.screenshot({ path: job.screenshot, fullPage: true });
} catch (err) {
  result.error = String(err?.stack ?? err).slice(0, 4000);
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result));

// Opens one static page in headless Chromium (playwright-core), runs a probe function in it, reports what happened.
//
// Usage: node page_probe.mjs <job.json>   (job: see tests/page_probe.py)
// Prints one JSON object: {problems: [...], result: <what the probe returned>}. Page errors, console
// errors and failed requests are problems.
import fs from "node:fs";
import { pathToFileURL } from "node:url";

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { chromium } = await import(pathToFileURL(job.playwright).href);
const browser = await chromium.launch({ executablePath: job.chromium, headless: true, args: job.args });
const problems = [];
let result = null;
try {
  const page = await browser.newPage({ viewport: job.viewport });
  page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
  page.on("pageerror", (e) => problems.push("pageerror: " + e.message));
  page.on("requestfailed", (r) => problems.push("requestfailed: " + r.url()));
  await page.goto(job.url);
  result = await page.evaluate(`(${job.probe})()`);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify({ problems, result }));

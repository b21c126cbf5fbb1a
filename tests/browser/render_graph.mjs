// Open the circuit-tracer frontend in headless Chromium and report what it rendered, as JSON.
// usage: node render_graph.mjs CONFIG.json
//   CONFIG: {urls: [...], chromium, nodeModules, timeoutMs, screenshotPrefix}; prints a list of
//   reports, one per url, each page in a fresh context. A url may be an object {url, waitFor (a CSS
//   selector to wait for instead of the graph's nodes), routes ([[prefix, localBase], ...]: requests
//   to prefix... are answered by localBase..., request headers such as Range kept), counts / texts
//   ({name: selector}: how many elements match / their first texts)}.
// The page's CDN scripts are answered locally: d3 v7 + d3-jetpack (npm d3-jetpack@2.3.0) with two
// bridges for what the page expects of Anthropic's own jetpack build, dagre@0.8.5, pako@2.1.0;
// the npy reader and the hot-reload client get empty scripts. Every other outside request is
// aborted. Playwright: the route registered last wins, so the catch-all abort goes first.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(path.join(config.nodeModules, "noop.js"));
const { chromium } = require("playwright-core");
const mod = (p) => readFileSync(path.join(config.nodeModules, p), "utf8");

// Expose the bundle's internal selection/transition prototypes (jetpack decorates those, not the
// exported d3.selection), then copy jetpack's helpers over and give d3.conventions() objects the
// drawAxis method the page calls.
const JETPACK_METHODS = ["translate", "append", "insert", "parent", "selectAppend", "tspans",
  "appendMany", "at", "st", "prop", "attrs", "styles", "properties"];
function d3Bundle() {
  const marker = "exports.drawAxis = drawAxis;";
  let text = mod("d3-jetpack/build/d3v7+jetpack.js");
  if (!text.includes(marker)) throw new Error("unexpected d3-jetpack bundle: " + marker + " missing");
  text = text.replace(marker, marker + " exports.__jpSelection = selection.prototype;" +
    " exports.__jpTransition = transition.prototype;");
  const bridge = `
;(function () {
  var methods = ${JSON.stringify(JETPACK_METHODS)};
  [[d3.__jpSelection, d3.selection.prototype], [d3.__jpTransition, d3.transition.prototype]]
    .forEach(function (pair) {
      methods.forEach(function (m) { if (pair[0][m]) pair[1][m] = pair[0][m]; });
    });
  var conventions = d3.conventions;
  d3.conventions = function () {
    var c = conventions.apply(this, arguments);
    c.drawAxis = function (svg) { return d3.drawAxis(Object.assign({}, c, { svg: svg || c.svg })); };
    return c;
  };
})();`;
  return text + bridge;
}

const scripts = {
  "static_js/lib/d3.js": d3Bundle(),
  "static_js/lib/jetpack_2024-07-20.js": "",
  "static_js/lib/npy_v0.js": "",
  "static_js/lib/hotserver-client-ws.js": "",
  "dagre@0.8.5/dist/dagre.min.js": mod("dagre/dist/dagre.min.js"),
  "pako@2.1.0/dist/pako.min.js": mod("pako/dist/pako.min.js"),
};

const browser = await chromium.launch({
  executablePath: config.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

async function render(target, screenshot) {
  const spec = typeof target === "string" ? { url: target } : target;
  const url = spec.url;
  const report = { url, pageErrors: [], consoleErrors: [], failedLocal: [], aborted: [], served: [],
    routed: [] };
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const local = new URL(url).origin;
  await page.route((u) => u.origin !== local, (route) => {
    report.aborted.push(route.request().url());
    return route.abort();
  });
  for (const [prefix, base] of spec.routes || []) {
    await page.route((u) => u.href.startsWith(prefix), async (route) => {
      const req = route.request();
      const cors = { "access-control-allow-origin": "*", "access-control-allow-headers": "range" };
      if (req.method() === "OPTIONS") return route.fulfill({ status: 204, headers: cors });
      const response = await route.fetch({ url: base + req.url().slice(prefix.length) });
      report.routed.push({ url: req.url(), method: req.method(), range: req.headers()["range"] || null,
        status: response.status() });
      return route.fulfill({ response, headers: { ...response.headers(), ...cors } });
    });
  }
  await page.route((u) => u.origin !== local && Object.keys(scripts).some(
    (k) => u.href.endsWith(k)), (route) => {
    const key = Object.keys(scripts).find((k) => route.request().url().endsWith(k));
    report.served.push(key);
    return route.fulfill({ status: 200, contentType: "application/javascript", body: scripts[key] });
  });
  page.on("pageerror", (err) => report.pageErrors.push(String((err && err.stack) || err)));
  page.on("console", (msg) => { if (msg.type() === "error") report.consoleErrors.push(msg.text()); });
  page.on("requestfailed", (req) => {
    if (req.url().startsWith(local)) report.failedLocal.push(req.url());
  });
  page.on("response", (res) => {
    if (res.url().startsWith(local) && res.status() >= 400) report.failedLocal.push(res.url());
  });
  await page.goto(url, { waitUntil: "load" });
  try {
    await page.waitForFunction(
      (sel) => document.querySelectorAll(sel).length > 0,
      spec.waitFor || ".link-graph text.node", { timeout: config.timeoutMs || 20000 });
  } catch (err) {
    report.waitError = String(err);
  }
  await page.waitForTimeout(500);
  report.counts = await page.evaluate((q) => Object.fromEntries(Object.entries(q).map(
    ([k, sel]) => [k, document.querySelectorAll(sel).length])), spec.counts || {});
  report.texts = await page.evaluate((q) => Object.fromEntries(Object.entries(q).map(
    ([k, sel]) => [k, [...document.querySelectorAll(sel)].slice(0, 20).map((e) => e.textContent)])),
    spec.texts || {});
  Object.assign(report, await page.evaluate(() => ({
    title: document.title,
    linkGraphNodes: document.querySelectorAll(".link-graph text.node").length,
    subgraphNodes: document.querySelectorAll(".subgraph .supernode-container").length,
    subgraphLabels: [...document.querySelectorAll(".subgraph .node-text-container span")]
      .map((e) => e.textContent.trim()),
    graphOptions: [...document.querySelectorAll("select.graph-prompt-select option")]
      .map((o) => o.value),
    yTicks: [...document.querySelectorAll(".link-graph .y .tick text")].map((t) => t.textContent)
      .filter((t) => t),
  })));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  await context.close();
  return report;
}

const reports = [];
try {
  for (const [i, target] of config.urls.entries()) {
    const shot = config.screenshotPrefix ? `${config.screenshotPrefix}${i}.png` : null;
    reports.push(await render(target, shot));
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(reports));

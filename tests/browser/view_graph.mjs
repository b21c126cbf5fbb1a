// Open tl_clt's interactive view (graph.show()) in headless Chromium, offline, and use it as a person
// would: count the drawn nodes, hover the largest feature, click it, move the slider to its first step.
// usage: node view_graph.mjs CONFIG.json
//   CONFIG: {url, chromium, nodeModules, timeoutMs, screenshot, inFrame}; prints one JSON report.
//   inFrame: the page holds the notebook output (an iframe); the view is inside it.
// Every request that is not the file itself is aborted and listed (the view must work offline).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(path.join(config.nodeModules, "noop.js"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: config.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const report = { pageErrors: [], consoleErrors: [], aborted: [] };
const page = await (await browser.newContext({ viewport: { width: 1400, height: 1100 } })).newPage();
await page.route((u) => !u.href.startsWith("file:") && !u.href.startsWith("about:"), (route) => {
  report.aborted.push(route.request().url());
  return route.abort();
});
page.on("pageerror", (err) => report.pageErrors.push(String((err && err.stack) || err)));
page.on("console", (msg) => { if (msg.type() === "error") report.consoleErrors.push(msg.text()); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// In the page (or frame): what the view shows now.
function state() {
  const gd = document.getElementById("tl-clt-graph");
  // only the node traces draw markers (edges are lines): every drawn marker is a node
  const points = gd.querySelectorAll(".scatterlayer .trace path.point").length;
  return {
    visibleNodes: Number(gd.dataset.visibleNodes),
    visibleEdges: Number(gd.dataset.visibleEdges),
    selected: gd.dataset.selected,
    points,
    inputs: gd.data[6].x.filter((v) => v !== null).length / 2,
    outputs: gd.data[7].x.filter((v) => v !== null).length / 2,
    panel: document.getElementById("tl-clt-card").textContent,
  };
}

// In the page (or frame): where the largest feature node is, in the frame's pixels.
function target() {
  const gd = document.getElementById("tl-clt-graph");
  const D = window.tlClt.data;
  let best = -1;
  D.nodes.forEach((n, i) => { if (n.kind === "feature" && (best < 0 || n.size > D.nodes[best].size)) best = i; });
  const n = D.nodes[best], fl = gd._fullLayout, box = gd.getBoundingClientRect();
  return {
    index: best, id: n.id,
    x: box.left + fl.xaxis._offset + fl.xaxis.l2p(n.x),
    y: box.top + fl.yaxis._offset + fl.yaxis.l2p(n.y),
  };
}

function sliderRail() {
  const rail = document.querySelector("#tl-clt-graph .slider-rail-touch-rect")
    || document.querySelector("#tl-clt-graph .slider-rail-rect");
  const r = rail.getBoundingClientRect();
  return { left: r.left, right: r.right, y: r.top + r.height / 2 };
}

try {
  await page.goto(config.url, { waitUntil: "load", timeout: config.timeoutMs });
  let frame = page, offset = { x: 0, y: 0 };
  if (config.inFrame) {
    const el = await page.waitForSelector("iframe", { timeout: config.timeoutMs });
    frame = await el.contentFrame();
    const box = await el.boundingBox();
    offset = { x: box.x, y: box.y };
  }
  await frame.waitForFunction(() => {
    const gd = document.getElementById("tl-clt-graph");
    return gd && gd.dataset.ready === "1";
  }, null, { timeout: config.timeoutMs });
  report.initial = await frame.evaluate(state);

  const t = await frame.evaluate(target);
  report.target = t;
  await page.mouse.move(offset.x + t.x, offset.y + t.y);
  await frame.waitForSelector(".hoverlayer .hovertext", { timeout: 5000 });
  report.hover = await frame.evaluate(() => document.querySelector(".hoverlayer .hovertext").textContent);

  await page.mouse.click(offset.x + t.x, offset.y + t.y);
  await sleep(300);
  report.clicked = await frame.evaluate(state);

  await page.mouse.click(offset.x + t.x, offset.y + t.y);  // click again: cleared
  await sleep(300);
  report.unclicked = await frame.evaluate(state);

  const rail = await frame.evaluate(sliderRail);
  await page.mouse.click(offset.x + rail.left + 2, offset.y + rail.y);
  await sleep(500);
  report.sliderFirst = await frame.evaluate(state);
  report.threshold = await frame.evaluate(() => window.tlClt.state.threshold);
  if (config.screenshot) await page.screenshot({ path: config.screenshot, fullPage: true });
} catch (err) {
  report.error = String((err && err.stack) || err);
}
await browser.close();
console.log(JSON.stringify(report));

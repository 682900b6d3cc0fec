// The gallery, end to end in headless Chromium: host.js (ext-apps' AppBridge) renders Noisett's App from a
// real server and this script clicks through it like a person. Run by tests/interop/test_gallery_browser.py,
// which starts the server. Environment: NOISETT_URL (the server's base URL), HOST_PORT (where to serve the
// host page; the server allows it by CORS), ARTIFACT_DIR (screenshots and metrics), DOCS_SCREENSHOT
// (optional: also write the README's screenshot there), CHROMIUM (default /usr/bin/chromium), and
// SAS_ORIGIN: with Blob storage, the one origin the App may load images from (the short SAS scenario).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const serverUrl = process.env.NOISETT_URL;
const hostPort = Number(process.env.HOST_PORT);
const artifacts = process.env.ARTIFACT_DIR;
if (!serverUrl || !hostPort || !artifacts) throw new Error("set NOISETT_URL, HOST_PORT and ARTIFACT_DIR");
mkdirSync(artifacts, { recursive: true });

const bundle = await build({
  entryPoints: [join(here, "host.js")],
  bundle: true,
  write: false,
  format: "iife",
  platform: "browser",
  target: "chrome120",
  logLevel: "error",
});
const pages = {
  "/": ["text/html", readFileSync(join(here, "host.html"))],
  "/host.js": ["text/javascript", bundle.outputFiles[0].contents],
};
const server = http.createServer((request, response) => {
  const page = pages[new URL(request.url, "http://x").pathname];
  response.writeHead(page ? 200 : 404, { "content-type": page ? page[0] : "text/plain" });
  response.end(page ? page[1] : "not found");
});
await new Promise((resolve) => server.listen(hostPort, "127.0.0.1", resolve));
const hostOrigin = `http://127.0.0.1:${hostPort}`;

const profile = mkdtempSync(join(tmpdir(), "noisett-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 480, height: 2400 },
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

const sasOrigin = process.env.SAS_ORIGIN || null;
const problems = []; // CSP violations, page errors, requests the App made where it may not
const metrics = {};
const step = (name) => console.log(`- ${name}`);
function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}
async function until(what, probe, timeoutMs = 120000, everyMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (message) => {
    const text = message.text();
    if (/Content[- ]Security[- ]Policy|Refused to/i.test(text)) problems.push(`CSP: ${text}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("request", (request) => {
    const frame = request.frame();
    // The App may not reach the network at all: its iframes are named app-N.
    if (frame && frame.name().startsWith("app-")) {
      if (!(sasOrigin && request.url().startsWith(`${sasOrigin}/`))) problems.push(`App request: ${request.url()}`);
    }
    else if (!request.url().startsWith(hostOrigin) && !request.url().startsWith(serverUrl))
      problems.push(`host request to an unexpected origin: ${request.url()}`);
  });
  await page.goto(hostOrigin);

  step("the host connects and lists the tools");
  const metas = await page.evaluate((url) => window.host.connect(url), `${serverUrl}/mcp`);
  check(metas.generate_image?.ui?.resourceUri === "ui://noisett/gallery.html", "generate_image names the gallery");
  check(metas.get_image?.ui?.resourceUri === "ui://noisett/gallery.html", "get_image names the gallery");
  check("cancel_image" in metas, "cancel_image is listed");

  if (sasOrigin) await sasScenario(page);
  else await fullScenario(page);
  check(problems.length === 0, `no CSP violations, errors or stray requests:\n${problems.join("\n")}`);
  writeFileSync(join(artifacts, "metrics.json"), JSON.stringify(metrics, null, 2));
  console.log(`METRICS ${JSON.stringify(metrics)}`);
} catch (error) {
  const page = context.pages()[0];
  if (page) await page.screenshot({ path: join(artifacts, "failure.png"), fullPage: true }).catch(() => {});
  console.error(error.stack || String(error));
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await context.close();
  server.close();
  rmSync(profile, { recursive: true, force: true });
}

// With Blob storage: the full image comes straight from its SAS link, which the declared CSP allows.
async function sasScenario(page) {
  step("with Blob storage: the full image from the SAS host, the one origin the CSP declares");
  const made = await page.evaluate(() => window.host.callTool("generate_image", { prompt: "a SAS link", steps: 2 }));
  const id = made.structuredContent.images[0].id;
  await until("the image uploaded (get_image gives its SAS link)", async () => {
    const got = await page.evaluate((imageId) => window.host.callTool("get_image", { image_id: imageId }), id);
    return got.structuredContent?.image?.url;
  });
  const index = await page.evaluate((imageId) => window.host.openApp("get_image", { image_id: imageId }), id);
  const record = (await page.evaluate(() => window.host.log.apps))[index];
  check(JSON.stringify(record.csp) === JSON.stringify({ connectDomains: [], resourceDomains: [sasOrigin] }),
        `the CSP allows the SAS host only: ${JSON.stringify(record.csp)}`);
  const app = page.frameLocator(`iframe[name="app-${index}"]`);
  await until("the image", async () => (await app.locator('.card[data-status="done"] .thumb img').count()) === 1);
  await app.locator(".card .thumb").click();
  await until("the full image from the SAS link", () =>
    app.locator("#viewer-img").evaluate((img) => img.complete && img.naturalWidth > 0 && img.src.includes("sig=")),
  );
  check((await app.locator("#viewer").getAttribute("data-source")) === "url", "shown from the SAS link");
  metrics.sasViewer = "url";
}

async function fullScenario(page) {
  step("generate_image (count 2, wait false): live progress, then both images");
  const first = await page.evaluate(
    () => window.host.openApp("generate_image", {
      prompt: "a lighthouse on a cliff at dusk, flat brand colours",
      count: 2,
      steps: 40, // long enough on a fast, idle machine for several 400 ms polls to see it run
      wait: false,
    }),
  );
  const app = page.frameLocator(`iframe[name="app-${first}"]`);
  const appFrame = page.frame({ name: `app-${first}` });
  const seen = new Set();
  await until("both images of the first request", async () => {
    const values = await app.locator(".card progress").evaluateAll((bars) => bars.map((bar) => bar.value));
    for (const value of values) if (value > 0 && value < 100) seen.add(value);
    return (await app.locator('.card[data-status="done"] .thumb img').count()) === 2;
  });
  const advancing = [...seen].sort((a, b) => a - b);
  check(advancing.length >= 2, `the progress bar advanced through several values (saw ${advancing.join(", ")})`);
  metrics.progressValuesSeen = advancing;
  const states = await app.locator(".card .state").allTextContents();
  check(states.every((text) => text === "Done"), `both cards say Done (${states})`);
  const firstIds = await app.locator(".card").evaluateAll((cards) => cards.map((card) => card.dataset.imageId));
  check(firstIds.length === 2 && firstIds[0] !== firstIds[1], "two distinct image ids");

  // Time to first paint of the App and to its first finished image, from the host's tool call.
  const record = (await page.evaluate(() => window.host.log.apps))[first];
  const paint = await appFrame.evaluate(() => ({
    origin: performance.timeOrigin,
    fcp: performance.getEntriesByType("paint").find((entry) => entry.name === "first-contentful-paint")?.startTime,
  }));
  const hostOriginTime = await page.evaluate(() => window.host.timeOrigin);
  metrics.firstContentfulPaintMs = Math.round(paint.origin + paint.fcp - (hostOriginTime + record.started));
  metrics.appInitializedMs = Math.round(record.timings.initialized);
  metrics.resourceReadMs = Math.round(record.timings.resourceRead);
  metrics.htmlBytes = record.htmlBytes;
  metrics.firstResultBytes = record.resultBytes;
  metrics.declaredCsp = record.csp;

  step("the full image on click, read through the bridge as image://ID");
  await app.locator(".card").first().locator(".thumb").click();
  await until("the full image", () =>
    app.locator("#viewer-img").evaluate((img) => img.complete && img.naturalWidth > 0 && img.src.startsWith("data:image/png")),
  );
  const reads = await page.evaluate(() => window.host.log.reads);
  check(reads.some((read) => read.uri === `image://${firstIds[0]}`), "the App read image://ID through the host");
  await app.locator("#viewer-close").click();

  step("Download goes through the host (ui/download-file) with the PNG itself");
  await app.locator(".card").first().locator('[data-action="download"]').click();
  const download = await until("a download", async () => (await page.evaluate(() => window.host.log.downloads))[0]);
  const file = download.contents[0];
  check(file.type === "resource" && file.resource.mimeType === "image/png", "an embedded PNG resource");
  check(Buffer.from(file.resource.blob, "base64").subarray(1, 4).toString() === "PNG", "PNG bytes");

  step("Use this seed pins it and tells the model");
  const pinnedSeed = Number(
    await app.locator(".card").first().evaluate((card) => /seed (\d+)/.exec(card.querySelector(".meta").textContent)[1]),
  );
  await app.locator(".card").first().locator('[data-action="seed"]').click();
  check((await app.locator("#pin-text").textContent()).includes(String(pinnedSeed)), "the pinned seed is shown");
  const updates = await until("a model-context update", async () => (await page.evaluate(() => window.host.log.contextUpdates))[0]);
  check(updates.structuredContent.seed === pinnedSeed, "the model is told the seed");

  step("More like this: a new generate_image call through the host, and new images");
  const callsBefore = (await page.evaluate(() => window.host.log.calls)).length;
  await app.locator(".card").nth(1).locator('[data-action="more"]').click();
  const more = await until("the More like this call", async () =>
    (await page.evaluate(() => window.host.log.calls)).slice(callsBefore).find((call) => call.name === "generate_image"),
  );
  check(more.from === `app-${first}` && more.arguments.count === 2 && more.arguments.seed === undefined,
        `new seeds, same count (${JSON.stringify(more.arguments)})`);
  check(more.arguments.prompt.startsWith("a lighthouse") && more.arguments.steps === 40, "same prompt and steps");
  // The README's picture: one request done, the next one rendering.
  const frameElement = page.locator(`iframe[name="app-${first}"]`);
  await until("the new request rendering", async () =>
    (await app.locator(".card").count()) === 4 &&
    (await app.locator(".card progress").evaluateAll((bars) => bars.some((bar) => !bar.hidden && bar.value > 0))) ||
    (await app.locator('.card[data-status="done"]').count()) === 4,
  );
  await frameElement.screenshot({ path: join(artifacts, "gallery.png") });
  if (process.env.DOCS_SCREENSHOT) await frameElement.screenshot({ path: process.env.DOCS_SCREENSHOT });
  await until("four finished images", async () => (await app.locator('.card[data-status="done"] .thumb img').count()) === 4);
  const allIds = await app.locator(".card").evaluateAll((cards) => cards.map((card) => card.dataset.imageId));
  check(new Set(allIds).size === 4, "the new images have new ids");

  step("Try another style: styles from list_styles, the same prompt and the pinned seed");
  await app.locator(`.card[data-image-id="${firstIds[0]}"] [data-action="style"]`).click();
  const select = app.locator(`.card[data-image-id="${firstIds[0]}"] select`);
  await until("the style list", async () => (await select.locator("option").count()) > 2);
  const options = await select.locator("option").evaluateAll((list) => list.map((option) => option.value));
  check(options.includes("demo-flat") && options.includes("demo-grain"), `styles offered: ${options}`);
  await select.selectOption("demo-grain");
  const styled = await until("the styled call", async () =>
    (await page.evaluate(() => window.host.log.calls)).find((call) => call.arguments?.style === "demo-grain"),
  );
  check(styled.arguments.seed === pinnedSeed && styled.arguments.count === 1, "pinned seed, one image");
  await until("five finished images", async () => (await app.locator('.card[data-status="done"] .thumb img').count()) === 5);
  const calls = await page.evaluate(() => window.host.log.calls);
  check(calls.some((call) => call.name === "list_styles" && call.from.startsWith("app-")), "list_styles via the host");

  step("get_image opens the same gallery for an image collected later");
  const later = await page.evaluate((id) => window.host.openApp("get_image", { image_id: id }), firstIds[0]);
  const laterApp = page.frameLocator(`iframe[name="app-${later}"]`);
  await until("the collected image", async () => (await laterApp.locator('.card[data-status="done"] .thumb img').count()) === 1);
  check((await laterApp.locator(".card").getAttribute("data-image-id")) === firstIds[0], "the same image");
  check((await laterApp.locator(".card .meta").textContent()).includes(`seed ${pinnedSeed}`), "its seed");

  step("a plain generate_image call (wait true, as assistants make it) shows its finished image");
  const waited = await page.evaluate(() => window.host.openApp("generate_image", { prompt: "waited for", steps: 2 }));
  const waitedApp = page.frameLocator(`iframe[name="app-${waited}"]`);
  await until("the waited-for image", async () => (await waitedApp.locator('.card[data-status="done"] .thumb img').count()) === 1);
  check((await waitedApp.locator("#status").textContent()) === "1 image: 1 done", "the summary");

  step("More like this on an image-to-image result starts from the same source, at the same strength");
  const restyled = await page.evaluate(
    (id) => window.host.openApp("generate_image", { prompt: "restyled", steps: 2, source_image_id: id, strength: 0.4 }),
    firstIds[0],
  );
  const restyledApp = page.frameLocator(`iframe[name="app-${restyled}"]`);
  await until("the image-to-image result", async () => (await restyledApp.locator('.card[data-status="done"] .thumb img').count()) === 1);
  const restyledBefore = (await page.evaluate(() => window.host.log.calls)).length;
  await restyledApp.locator(".card").first().locator('[data-action="more"]').click();
  const moreRestyled = await until("the More like this call from the image-to-image result", async () =>
    (await page.evaluate(() => window.host.log.calls)).slice(restyledBefore).find((call) => call.name === "generate_image"),
  );
  check(moreRestyled.arguments.source_image_id === firstIds[0] && moreRestyled.arguments.strength === 0.4,
        `the same source and strength (${JSON.stringify(moreRestyled.arguments)})`);
  await until("the new image-to-image result", async () => (await restyledApp.locator('.card[data-status="done"]').count()) === 2);

  step("the host's dark theme");
  await page.evaluate(() => window.host.setTheme("dark"));
  const dark = await until("the dark theme", async () => {
    const background = await app.locator("body").evaluate((body) => getComputedStyle(body).backgroundColor);
    return background === "rgb(24, 24, 27)" ? background : null;
  }, 5000);
  check(Boolean(dark), "the App follows the host's theme");
  await frameElement.screenshot({ path: join(artifacts, "gallery-dark.png") });
  await page.evaluate(() => window.host.setTheme("light"));

  step("Cancel on a long job ends it cancelled");
  const long = await page.evaluate(
    () => window.host.openApp("generate_image", { prompt: "a very long job", count: 1, steps: 100, wait: false }),
  );
  const longApp = page.frameLocator(`iframe[name="app-${long}"]`);
  await until("the long job running", async () =>
    (await longApp.locator('.card[data-status="running"]').count()) === 1 &&
    (await longApp.locator(".card progress").evaluate((bar) => bar.value > 0)),
  );
  await longApp.locator('[data-action="cancel"]').click();
  await until("the cancelled state", async () => (await longApp.locator('.card[data-status="cancelled"]').count()) === 1, 30000);
  const longId = await longApp.locator(".card").getAttribute("data-image-id");
  const cancelCall = (await page.evaluate(() => window.host.log.calls)).find((call) => call.name === "cancel_image");
  check(cancelCall && cancelCall.from === `app-${long}` && cancelCall.arguments.image_id === longId, "cancel_image via the host");
  const after = await page.evaluate((id) => window.host.callTool("get_image", { image_id: id }), longId);
  check(after.isError && /cancelled/.test(after.content[0].text), `the server says cancelled: ${after.content[0].text}`);
  metrics.cancelledState = await longApp.locator(".card .state").textContent();
  metrics.toolCalls = calls.length + 1;
}

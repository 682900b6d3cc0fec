// The test host: a chat-like page that renders Noisett's MCP App the way real hosts do, with the
// ext-apps package's own host side (AppBridge), connected to a real Noisett server over streamable HTTP.
// Bundled for the browser by run.mjs (esbuild). Everything it sees is recorded in window.host.log.
import {
  AppBridge,
  PostMessageTransport,
  RESOURCE_MIME_TYPE,
  getToolUiResourceUri,
} from "@modelcontextprotocol/ext-apps/app-bridge";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const HOST_INFO = { name: "noisett-test-host", version: "1.0.0" };
const log = { calls: [], reads: [], downloads: [], contextUpdates: [], links: [], apps: [] };
let client = null;
let tools = new Map();
let theme = "light";
const bridges = [];

async function connect(url) {
  // Advertise MCP Apps, as Apps-capable hosts do (the server may use it to shape results).
  client = new Client(HOST_INFO, {
    capabilities: { extensions: { "io.modelcontextprotocol/ui": { mimeTypes: [RESOURCE_MIME_TYPE] } } },
  });
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  tools = new Map((await client.listTools()).tools.map((tool) => [tool.name, tool]));
  return Object.fromEntries([...tools].map(([name, tool]) => [name, tool._meta ?? null]));
}

// The iframe's CSP, built from the resource's declared _meta.ui.csp and nothing else: an App that
// reaches anywhere it did not declare is refused (and the test sees the violation).
function cspFor(declared = {}) {
  const clean = (list) => (list || []).filter((d) => typeof d === "string" && !/[;\r\n'" ]/.test(d)).join(" ");
  const resources = clean(declared.resourceDomains);
  return [
    "default-src 'none'",
    "script-src 'unsafe-inline'",
    `style-src 'unsafe-inline' ${resources}`,
    `img-src data: blob: ${resources}`,
    `font-src data: ${resources}`,
    `connect-src ${clean(declared.connectDomains) || "'none'"}`,
    "frame-src 'none'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
  ]
    .map((directive) => directive.trim())
    .join("; ");
}

function withCsp(html, csp) {
  const meta = `<meta http-equiv="Content-Security-Policy" content="${csp}">`;
  const head = /<head[^>]*>/i.exec(html);
  return head ? html.slice(0, head.index + head[0].length) + meta + html.slice(head.index + head[0].length) : meta + html;
}

function hostContext() {
  return { theme, platform: "web", displayMode: "inline", availableDisplayModes: ["inline"], locale: "en-GB" };
}

// One tool call from "the model", with its App rendered below it, as a chat turn.
async function openApp(name, args) {
  const started = performance.now();
  const index = log.apps.length;
  const record = { index, name, args, started, resourceUri: null, csp: null, htmlBytes: 0, timings: {} };
  log.apps.push(record);
  log.calls.push({ from: "host", name, arguments: args, at: started });
  const resultPromise = client.callTool({ name, arguments: args });
  const uri = getToolUiResourceUri(tools.get(name));
  record.resourceUri = uri;
  const resource = await client.readResource({ uri });
  const content = resource.contents[0];
  if (content.mimeType !== RESOURCE_MIME_TYPE) throw new Error(`unexpected MIME type ${content.mimeType}`);
  record.csp = content._meta?.ui?.csp ?? null;
  record.htmlBytes = new TextEncoder().encode(content.text).length;
  record.timings.resourceRead = performance.now() - started;

  const turn = document.createElement("section");
  turn.className = "turn";
  const title = document.createElement("h2");
  title.textContent = `${name}(${JSON.stringify(args)})`;
  const iframe = document.createElement("iframe");
  iframe.className = "app";
  iframe.name = `app-${index}`;
  iframe.title = "Noisett gallery";
  iframe.setAttribute("sandbox", "allow-scripts"); // an opaque origin: no cookies, no storage, no same-origin
  turn.append(title, iframe);
  document.getElementById("chat").append(turn);

  const bridge = new AppBridge(
    client,
    HOST_INFO,
    { openLinks: {}, downloadFile: {}, updateModelContext: { text: {} }, serverTools: {}, serverResources: {}, logging: {} },
    { hostContext: hostContext() },
  );
  const initialized = new Promise((resolve) => {
    bridge.oninitialized = () => {
      record.timings.initialized = performance.now() - started;
      resolve();
    };
  });
  bridge.onsizechange = ({ height }) => {
    if (height !== undefined) iframe.style.height = `${height}px`;
  };
  bridge.ondownloadfile = async (params) => {
    log.downloads.push(params);
    return {};
  };
  bridge.onupdatemodelcontext = async (params) => {
    log.contextUpdates.push(params);
    return {};
  };
  bridge.onopenlink = async (params) => {
    log.links.push(params);
    return {};
  };
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  // connect() wires tools/call and resources/read to the MCP client; record what the App asks for.
  const forwardCall = bridge.oncalltool;
  bridge.oncalltool = async (params, extra) => {
    log.calls.push({ from: `app-${index}`, name: params.name, arguments: params.arguments, at: performance.now() });
    return forwardCall(params, extra);
  };
  const forwardRead = bridge.onreadresource;
  bridge.onreadresource = async (params, extra) => {
    log.reads.push({ from: `app-${index}`, uri: params.uri });
    return forwardRead(params, extra);
  };
  bridges.push(bridge);
  iframe.srcdoc = withCsp(content.text, cspFor(record.csp || {}));
  await initialized;
  await bridge.sendToolInput({ arguments: args });
  const result = await resultPromise;
  record.timings.result = performance.now() - started;
  record.resultBytes = new TextEncoder().encode(JSON.stringify(result)).length;
  await bridge.sendToolResult(result);
  return index;
}

function setTheme(next) {
  theme = next;
  document.body.classList.toggle("dark", next === "dark");
  for (const bridge of bridges) bridge.setHostContext(hostContext());
}

async function callTool(name, args) {
  return client.callTool({ name, arguments: args });
}

window.host = { connect, openApp, setTheme, callTool, log, timeOrigin: performance.timeOrigin };

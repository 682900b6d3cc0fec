// Drives Noisett with the TypeScript SDK's client (a client nobody on this project wrote) and prints one
// JSON report on stdout; tests/interop/test_ts_client.py starts the server and judges the report.
//
//   node client.mjs '{"transport": "stdio", "command": "python", "args": [...], "env": {...}, "dataDir": "..."}'
//   node client.mjs '{"transport": "http", "url": "http://127.0.0.1:PORT/mcp", "dataDir": "..."}'
//   node client.mjs '{"transport": "mcp-remote", "url": "...", "configDir": "...", "dataDir": "..."}'
//
// Facts only, measured on the client's side: the Python test decides what passes.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const LONG_PROMPT = "a long job that the client aborts";
const SHORT = { prompt: "a short job", steps: 2 };
const LONG = { prompt: LONG_PROMPT, steps: 100, count: 4 };
// Generous: a broken cancel makes the next job wait for the whole long job, which the test must see.
const CALL_OPTIONS = { timeout: 300_000, resetTimeoutOnProgress: true };

const config = JSON.parse(process.argv[2]);
const report = { transport: config.transport };

function transportFor(config) {
  if (config.transport === "stdio") {
    return new StdioClientTransport({
      command: config.command,
      args: config.args,
      env: config.env,
      stderr: "inherit",
    });
  }
  if (config.transport === "http") {
    return new StreamableHTTPClientTransport(new URL(config.url));
  }
  if (config.transport === "mcp-remote") {
    // mcp-remote as Claude Desktop runs it: a stdio server that forwards to the HTTP endpoint.
    const proxy = createRequire(import.meta.url).resolve("mcp-remote/dist/proxy.js");
    return new StdioClientTransport({
      command: process.execPath,
      args: [proxy, config.url, "--transport", "http-only"],
      env: { ...process.env, MCP_REMOTE_CONFIG_DIR: config.configDir },
      stderr: "inherit",
    });
  }
  throw new Error(`unknown transport ${config.transport}`);
}

function text(result) {
  return (result.content ?? [])
    .filter((block) => block.type === "text")
    .map((block) => block.text)
    .join("\n");
}

// Strict Ajv on draft 2020-12: an unknown keyword or a bad schema is an error, not a warning.
function compileSchemas(tools) {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  const validators = {};
  const errors = [];
  for (const tool of tools) {
    for (const kind of ["inputSchema", "outputSchema"]) {
      if (!tool[kind]) continue;
      try {
        validators[`${tool.name}.${kind}`] = ajv.compile(tool[kind]);
      } catch (error) {
        errors.push(`${tool.name}.${kind}: ${error.message}`);
      }
    }
  }
  return { validators, errors };
}

// Calls a tool and times its first denoising step (progress >= 1; below 1 is queued/loading). The SDK
// drops a progress notification that arrives in the same read as the response (it handles
// notifications a microtask late), so a job that ends between two reads may show no step: then the
// response's arrival stands in for it, an upper bound.
function timedCall(client, args, extra = {}) {
  const call = { started: performance.now(), steps: [] };
  call.promise = client
    .callTool({ name: "generate_image", arguments: args }, undefined, {
      ...CALL_OPTIONS,
      ...extra,
      onprogress: (progress) => {
        if (progress.progress >= 1) call.steps.push({ at: performance.now(), value: progress.progress });
      },
    })
    .finally(() => {
      call.ended = performance.now();
    });
  return call;
}

function firstStepAt(call) {
  return call.steps.length ? call.steps[0].at : call.ended;
}

// The aborted call never returns its ids: find them by prompt among the store's records.
function recordIds(dir, prompt) {
  const ids = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      ids.push(...recordIds(path, prompt));
    } else if (name.endsWith(".json")) {
      try {
        const record = JSON.parse(readFileSync(path, "utf8"));
        if (record.prompt === prompt && typeof record.id === "string") ids.push(record.id);
      } catch {
        // not a record
      }
    }
  }
  return ids;
}

async function waitUntil(predicate, seconds) {
  const deadline = performance.now() + seconds * 1000;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${seconds} s`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function main() {
  const client = new Client({ name: "noisett-interop", version: "1.0.0" });
  await client.connect(transportFor(config));
  report.server = client.getServerVersion();
  report.protocol = client.transport?.protocolVersion ?? null;

  const { tools } = await client.listTools();
  report.tools = tools.map((tool) => tool.name).sort();
  const { validators, errors } = compileSchemas(tools);
  report.schemas_compiled = Object.keys(validators).sort();
  report.schema_errors = errors;

  // generate_image with an onprogress handler; the SDK itself also checks structured content against
  // the output schema (it throws if it does not validate), and so do we, with strict Ajv.
  const progress = [];
  const generated = await client.callTool(
    { name: "generate_image", arguments: { prompt: "a lighthouse at dusk", steps: 3 } },
    undefined,
    { ...CALL_OPTIONS, onprogress: (p) => progress.push(p.progress) },
  );
  const validate = validators["generate_image.outputSchema"];
  report.generate = {
    is_error: Boolean(generated.isError),
    text: text(generated),
    progress,
    structured_valid: validate ? validate(generated.structuredContent) : null,
    structured_errors: validate?.errors ?? null,
    content_types: generated.content.map((block) => block.type),
  };
  const imageId = generated.structuredContent?.images?.[0]?.id;
  report.generate.image_id = imageId;

  const got = await client.callTool({ name: "get_image", arguments: { image_id: imageId } });
  const gotValidate = validators["get_image.outputSchema"];
  report.get_image = {
    is_error: Boolean(got.isError),
    status: got.structuredContent?.image?.status,
    structured_valid: gotValidate ? gotValidate(got.structuredContent) : null,
    content_types: got.content.map((block) => block.type),
  };

  const read = await client.readResource({ uri: `image://${imageId}` });
  const blob = read.contents[0]?.blob ?? "";
  report.resource = {
    uri: read.contents[0]?.uri,
    mime_type: read.contents[0]?.mimeType,
    png: Buffer.from(blob, "base64").subarray(0, 8).toString("hex") === "89504e470d0a1a0a",
  };

  // The short job alone: the reference for the one sent right after an abort.
  const alone = timedCall(client, SHORT);
  const aloneResult = await alone.promise;
  report.alone = {
    is_error: Boolean(aloneResult.isError),
    first_step_s: (firstStepAt(alone) - alone.started) / 1000,
    steps_seen: alone.steps.length,
  };

  // Abort a long job a second into its steps, then send the short one at once.
  const controller = new AbortController();
  const long = timedCall(client, LONG, { signal: controller.signal });
  const longOutcome = long.promise.then(
    (result) => ({ returned: true, is_error: Boolean(result.isError), text: text(result) }),
    (error) => ({ returned: false, error: String(error) }),
  );
  await waitUntil(() => long.steps.length > 0 && performance.now() - long.steps[0].at > 1000, 120);
  const abortedAt = performance.now();
  controller.abort("the user pressed stop");
  const next = timedCall(client, SHORT);
  const nextResult = await next.promise;
  report.abort = {
    outcome: await longOutcome,
    steps_seen_before_abort: long.steps.at(-1).value,
    next_is_error: Boolean(nextResult.isError),
    next_status: nextResult.structuredContent?.images?.[0]?.status,
    cancel_to_first_step_s: (firstStepAt(next) - abortedAt) / 1000,
    next_steps_seen: next.steps.length,
  };

  // get_image on every aborted image: each must end `cancelled`.
  const longIds = recordIds(config.dataDir, LONG_PROMPT);
  report.abort.image_texts = [];
  for (const id of longIds) {
    const result = await client.callTool({ name: "get_image", arguments: { image_id: id } });
    report.abort.image_texts.push(text(result));
  }
  await client.close();
}

try {
  await main();
  report.ok = true;
} catch (error) {
  report.ok = false;
  report.error = String(error?.stack ?? error);
}
process.stdout.write(`${JSON.stringify(report)}\n`);
process.exit(0);

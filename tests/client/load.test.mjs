// Load test for `specula serve` (ctest client.load): 200 requests from 16 concurrent clients on
// the demo model all complete with 200, and every answer equals the answer the same request got
// when it was sent alone -- greedy and sampled alike (each request has its seed), chat and
// completions, streamed and not, some with stop strings -- so requests do not leak into each
// other through the scheduler, the sampler state, the KV cache or the stop matcher. The server's
// resident memory (VmRSS from /proc/PID/status) is reported at start, after a warm-up (every
// request alone, then one concurrent round) and after the load; after the warm-up it may grow by
// at most RSS_BOUND_KIB. /metrics must count the 200 requests as run to their end (completed, or stopped at a stop
// string), none failed or refused.
//
// The figures are printed on stderr (ctest -V shows them). On the 2-core development machine the
// whole test takes about 10 s: about 3 s of warm-up and 6 s of load (32 requests/s, 3050 tokens).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { makeDemoModel, startServer, rawRequest, answerOf } from './specula_server.mjs';

const CLIENTS = 16;
const REQUESTS = 200;
// Growth allowed after the warm-up. The server keeps no per-request state once a request ends;
// what may still move is the allocator's caches and the HTTP worker threads' touched stacks
// (measured on 2 cores: about 120 KiB over the 200 requests). A leak of 20 KiB per request (a
// kept prompt, token list or response body of a few thousand tokens) would exceed it.
const RSS_BOUND_KIB = 4 * 1024;

let model, server;
before(async () => {
  model = makeDemoModel();
  server = await startServer(model.dir, ['--max-queue', '64']);
});
after(async () => {
  if (server) assert.equal(await server.stop(), 0, `specula serve did not exit cleanly:\n${server.log()}`);
  model?.cleanup();
});

// 40 distinct requests: every combination the answers could depend on.
function makeSpecs() {
  const specs = [];
  const temperatures = [0, 0.7, 1.0, 1.3];
  for (let i = 0; i < 40; ++i) {
    const chat = i % 2 === 0;
    const stream = i % 4 >= 2;
    const body = {
      max_tokens: 8 + (i % 7) * 3,
      temperature: temperatures[i % 4],
      seed: 1000 + i,
      ...(stream ? { stream: true, stream_options: { include_usage: true } } : {}),
    };
    if (i % 5 === 1) body.top_p = 0.9;
    if (i % 5 === 2) body.top_k = 20;
    if (i % 5 === 3) body.frequency_penalty = 0.5;
    if (i % 8 === 5) body.stop = ['e', 'th'];
    const text = `request ${i}: the quick brown fox ${'jumps '.repeat(i % 6)}`;
    if (chat) body.messages = [{ role: 'user', content: text }];
    else body.prompt = text;
    specs.push({ path: chat ? '/v1/chat/completions' : '/v1/completions', body: JSON.stringify(body), stream });
  }
  return specs;
}

async function send(spec) {
  const r = await rawRequest(server.port, { path: spec.path, body: spec.body });
  assert.equal(r.status, 200, `${spec.body}\n${r.body}`);
  const a = answerOf(spec.path, spec.stream, r.body);
  assert.ok(a.usage, `no usage in ${r.body.slice(0, 300)}`);
  return { text: a.text, finish: a.finish, completion_tokens: a.usage.completion_tokens };
}

// Runs `jobs` (functions returning promises) on `clients` concurrent workers.
async function runConcurrently(jobs, clients) {
  const results = new Array(jobs.length);
  let next = 0;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  }));
  return results;
}

async function metric(name, labels) {
  const r = await rawRequest(server.port, { method: 'GET', path: '/metrics' });
  const m = new RegExp(`^${name}\\{${labels}\\} (\\d+)`, 'm').exec(r.body);
  assert.ok(m, `no ${name}{${labels}} in /metrics`);
  return Number(m[1]);
}

test(`${REQUESTS} requests from ${CLIENTS} clients equal their lone answers; RSS stays flat`, async () => {
  const mib = (kib) => `${(kib / 1024).toFixed(1)} MiB`;
  const rssStart = server.rssKiB();
  const specs = makeSpecs();
  const t0 = Date.now();
  const alone = [];
  for (const spec of specs) alone.push(await send(spec));
  assert.ok(new Set(alone.map((a) => a.text)).size > 20, 'the requests should mostly have different answers');
  assert.ok(alone.some((a) => a.finish === 'stop'), 'some request should end at a stop string');
  // Warm-up under concurrency too (the HTTP worker threads, the allocator's per-thread caches).
  const warm = await runConcurrently(specs.slice(0, CLIENTS).map((s) => () => send(s)), CLIENTS);
  for (let i = 0; i < CLIENTS; ++i) assert.deepEqual(warm[i], alone[i], `warm-up request ${i}`);
  const rssBefore = server.rssKiB();
  // A request ended by a stop string is cancelled in the scheduler's terms (the server stops it).
  const ended = async () => await metric('specula_scheduler_requests_total', 'outcome="completed"') +
                            await metric('specula_scheduler_requests_total', 'outcome="cancelled"');
  const endedBefore = await ended();

  const t1 = Date.now();
  const jobs = Array.from({ length: REQUESTS }, (_, k) => () => send(specs[(k * 7) % specs.length]));
  const results = await runConcurrently(jobs, CLIENTS);
  const loadSeconds = (Date.now() - t1) / 1000;
  let mismatches = 0;
  for (let k = 0; k < REQUESTS; ++k) {
    const i = (k * 7) % specs.length;
    if (JSON.stringify(results[k]) !== JSON.stringify(alone[i])) {
      ++mismatches;
      console.error(`request ${k} (spec ${i}) differs from its lone answer:\n  ${JSON.stringify(results[k])}\n  ` +
                    `${JSON.stringify(alone[i])}\n  ${specs[i].body}`);
    }
  }
  const rssAfter = server.rssKiB();
  const endedDuringLoad = await ended() - endedBefore;
  const failed = await metric('specula_scheduler_requests_total', 'outcome="failed"');
  const rejected = await metric('specula_scheduler_requests_total', 'outcome="rejected"');
  const tokens = results.reduce((s, r) => s + r.completion_tokens, 0);
  console.error(`load: ${REQUESTS} requests from ${CLIENTS} clients in ${loadSeconds.toFixed(2)} s ` +
                `(${(REQUESTS / loadSeconds).toFixed(1)} requests/s, ${tokens} tokens), warm-up ${((t1 - t0) / 1000).toFixed(2)} s`);
  console.error(`load: server RSS at start ${mib(rssStart)}, after warm-up ${mib(rssBefore)}, after the load ` +
                `${mib(rssAfter)} (growth ${rssAfter - rssBefore} KiB; bound ${RSS_BOUND_KIB} KiB)`);
  assert.equal(mismatches, 0, `${mismatches} of ${REQUESTS} answers differ from the same request sent alone`);
  assert.equal(endedDuringLoad, REQUESTS, 'the scheduler did not run every request to its end');
  assert.equal(failed, 0, 'the scheduler reports failed requests');
  assert.equal(rejected, 0, 'the scheduler refused requests (queue full)');
  assert.ok(rssAfter - rssBefore <= RSS_BOUND_KIB,
            `RSS grew by ${rssAfter - rssBefore} KiB over ${REQUESTS} requests (bound ${RSS_BOUND_KIB} KiB)`);
});

// `specula serve` driven by the official OpenAI Node SDK (npm package `openai`, pinned in
// package-lock.json): what a real client sees. Chat and legacy completions, streamed and not
// (the streamed text equals the non-streamed text), `stop` strings that straddle a token boundary
// (the answer ends just before the stop string and no streamed chunk goes past it), `seed` (same
// seed, same sampled answer; another seed, another answer), usage in the last chunk with
// stream_options.include_usage, models.list, and the SDK's typed errors: AuthenticationError for a
// wrong key, NotFoundError for an unknown model, BadRequestError naming `n` for n = 2.
//
// Run by ctest (tests/CMakeLists.txt: node tests/client/openai_sdk.test.mjs with SPECULA_CLI set);
// the SDK is installed by scripts/setup.sh (`npm ci` in tests/client). Without it this suite fails
// at once saying so: a missing client is not a pass.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { makeDemoModel, startServer } from './specula_server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
if (!existsSync(join(here, 'node_modules', 'openai', 'package.json'))) {
  console.error(`openai_sdk: ${join(here, 'node_modules')} has no 'openai' package. Install the client test ` +
                `dependencies with scripts/setup.sh (it runs 'npm ci' in tests/client), or run 'npm ci' there.`);
  process.exit(1);
}
const { default: OpenAI } = await import('openai');

const API_KEY = 'sk-specula-test';
let model, server, client;

before(async () => {
  model = makeDemoModel();
  server = await startServer(model.dir, ['--api-key', API_KEY]);
  client = new OpenAI({ baseURL: server.baseURL, apiKey: API_KEY, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  if (server) assert.equal(await server.stop(), 0, `specula serve did not exit cleanly:\n${server.log()}`);
  model?.cleanup();
});

const messages = [{ role: 'user', content: 'The quick brown fox' }];

// One request, chat or completion, streamed or not: { text, finish, usage, pieces }. `pieces`
// holds the text of each streamed chunk, in order (token boundaries, as the server sent them).
async function ask(kind, params, { stream = false, includeUsage = false } = {}) {
  const body = { model: model.id, ...params };
  if (kind === 'chat') body.messages ??= messages;
  else body.prompt ??= 'The quick brown fox';
  const api = kind === 'chat' ? client.chat.completions : client.completions;
  if (!stream) {
    const r = await api.create(body);
    assert.equal(r.choices.length, 1);
    const c = r.choices[0];
    assert.equal(r.object, kind === 'chat' ? 'chat.completion' : 'text_completion');
    if (kind === 'chat') assert.equal(c.message.role, 'assistant');
    return { text: kind === 'chat' ? c.message.content : c.text, finish: c.finish_reason, usage: r.usage, pieces: null };
  }
  const s = await api.create({ ...body, stream: true, ...(includeUsage ? { stream_options: { include_usage: true } } : {}) });
  const pieces = [];
  let finish = null;
  let usage = null;
  let chunks = 0;
  let afterUsage = false;
  for await (const chunk of s) {
    ++chunks;
    assert.equal(afterUsage, false, 'a chunk came after the usage chunk');
    assert.equal(chunk.object, kind === 'chat' ? 'chat.completion.chunk' : 'text_completion');
    if (chunk.usage) {
      usage = chunk.usage;
      assert.deepEqual(chunk.choices, [], 'the usage chunk has no choices');
      afterUsage = true;
      continue;
    }
    if (includeUsage) assert.equal(chunk.usage, null, 'with include_usage, other chunks carry usage: null');
    assert.equal(chunk.choices.length, 1);
    const c = chunk.choices[0];
    assert.equal(finish, null, 'a chunk came after the one with finish_reason');
    const piece = kind === 'chat' ? c.delta.content : c.text;
    if (piece) pieces.push(piece);
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.ok(chunks > 0);
  return { text: pieces.join(''), finish, usage, pieces };
}

for (const kind of ['chat', 'completions']) {
  test(`${kind}: streamed and not, the same text, finish_reason and usage`, async () => {
    const params = { max_tokens: 16, temperature: 0 };
    const plain = await ask(kind, params);
    assert.equal(typeof plain.text, 'string');
    assert.ok(plain.text.length > 0, 'an empty answer');
    assert.ok(['stop', 'length'].includes(plain.finish), plain.finish);
    assert.ok(plain.usage.prompt_tokens > 0);
    assert.ok(plain.usage.completion_tokens > 0 && plain.usage.completion_tokens <= 16);
    assert.equal(plain.usage.total_tokens, plain.usage.prompt_tokens + plain.usage.completion_tokens);
    const streamed = await ask(kind, params, { stream: true, includeUsage: true });
    assert.equal(streamed.text, plain.text);
    assert.equal(streamed.finish, plain.finish);
    assert.deepEqual(streamed.usage, plain.usage, 'usage in the last chunk (stream_options.include_usage)');
    const noUsage = await ask(kind, params, { stream: true });
    assert.equal(noUsage.usage, null, 'no usage chunk unless asked for');
    assert.equal(noUsage.text, plain.text);
  });

  test(`${kind}: a stop string across a token boundary ends the answer before it, streamed or not`, async () => {
    const params = { max_tokens: 32, temperature: 1, seed: 7 };
    const full = await ask(kind, params, { stream: true });
    // A stop string made of the end of one streamed piece and the start of the next, whose first
    // occurrence in the answer is right there: it spans a token boundary.
    let stop = null;
    let cut = -1;
    let offset = 0;
    for (let i = 0; i + 1 < full.pieces.length && stop === null; ++i) {
      offset += full.pieces[i].length;
      const a = full.pieces[i].slice(-2), b = full.pieces[i + 1].slice(0, 2);
      const candidate = a + b;
      if (!/^[\x20-\x7e]+$/.test(candidate) || a.length === 0 || b.length === 0) continue;
      if (full.text.indexOf(candidate) === offset - a.length) {
        stop = candidate;
        cut = offset - a.length;
      }
    }
    assert.ok(stop !== null, `no ASCII stop string straddles a chunk boundary in ${JSON.stringify(full.pieces)}`);
    const expected = full.text.slice(0, cut);
    const plain = await ask(kind, { ...params, stop: [stop, 'never-occurs-zq'] });
    assert.equal(plain.text, expected, `stop ${JSON.stringify(stop)}`);
    assert.equal(plain.finish, 'stop');
    const streamed = await ask(kind, { ...params, stop }, { stream: true, includeUsage: true });
    assert.equal(streamed.text, expected, `streamed past stop ${JSON.stringify(stop)}: ${JSON.stringify(streamed.pieces)}`);
    assert.equal(streamed.finish, 'stop');
    assert.ok(streamed.usage.completion_tokens < full.pieces.length + 1);
  });

  test(`${kind}: the same seed gives the same sampled answer, another seed another`, async () => {
    const params = { max_tokens: 24, temperature: 1, top_p: 0.95 };
    const a = await ask(kind, { ...params, seed: 42 });
    const b = await ask(kind, { ...params, seed: 42 }, { stream: true });
    const c = await ask(kind, { ...params, seed: 43 });
    assert.equal(b.text, a.text);
    assert.notEqual(c.text, a.text, 'seeds 42 and 43 gave the same answer: is the seed used?');
  });
}

test('models.list names the served model', async () => {
  const page = await client.models.list();
  const ids = [];
  for await (const m of page) ids.push(m.id);
  assert.deepEqual(ids, [model.id]);
  const one = await client.models.list();
  assert.equal(one.data[0].object, 'model');
});

test('a wrong API key raises AuthenticationError, a missing one too', async () => {
  for (const apiKey of ['sk-wrong', 'x']) {
    const bad = new OpenAI({ baseURL: server.baseURL, apiKey, maxRetries: 0 });
    await assert.rejects(bad.chat.completions.create({ model: model.id, messages, max_tokens: 4 }), (e) => {
      assert.ok(e instanceof OpenAI.AuthenticationError, `${e.constructor.name}: ${e.message}`);
      assert.equal(e.status, 401);
      assert.equal(e.code, 'invalid_api_key');
      return true;
    });
    await assert.rejects(bad.models.list(), OpenAI.AuthenticationError);
  }
});

test('an unknown model raises NotFoundError', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages, max_tokens: 4 }), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, `${e.constructor.name}: ${e.message}`);
    assert.equal(e.status, 404);
    assert.equal(e.code, 'model_not_found');
    assert.match(e.message, /no-such-model/);
    return true;
  });
  await assert.rejects(client.completions.create({ model: 'no-such-model', prompt: 'hi', max_tokens: 4 }),
                       OpenAI.NotFoundError);
});

test('n = 2 raises BadRequestError naming the field', async () => {
  for (const stream of [false, true]) {
    await assert.rejects(client.chat.completions.create({ model: model.id, messages, max_tokens: 4, n: 2, stream }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `${e.constructor.name}: ${e.message}`);
      assert.equal(e.status, 400);
      assert.equal(e.param, 'n');
      assert.match(e.message, /'n'/);
      return true;
    });
  }
});

// ---- logprobs -------------------------------------------------------------------------------
// The raw model distribution's log-probabilities (the server's README section), in OpenAI's shapes.

function checkTopLogprobs(entry, n) {
  assert.equal(typeof entry.token, 'string');
  assert.ok(Number.isFinite(entry.logprob) && entry.logprob <= 0, `logprob ${entry.logprob}`);
  assert.ok(Array.isArray(entry.bytes));
  assert.equal(entry.top_logprobs.length, n);
  for (let i = 1; i < n; ++i) assert.ok(entry.top_logprobs[i - 1].logprob >= entry.top_logprobs[i].logprob);
  // Greedy: the chosen token is the most likely one.
  assert.equal(entry.top_logprobs[0].token, entry.token);
  assert.ok(Math.abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-4);
}

test('chat logprobs: one entry per token with top_logprobs, streamed and not', async () => {
  const r = await client.chat.completions.create({
    model: model.id, messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3 });
  const lp = r.choices[0].logprobs;
  assert.ok(lp && Array.isArray(lp.content), `logprobs is ${JSON.stringify(lp)}`);
  assert.equal(lp.content.length, r.usage.completion_tokens);
  // The entries' bytes spell the answer (a token that is not whole UTF-8 shows as "bytes:\\xNN" in
  // `token`, as OpenAI writes it; its bytes are still exact).
  assert.equal(Buffer.from(lp.content.flatMap((e) => e.bytes)).toString('utf8'), r.choices[0].message.content);
  for (const e of lp.content) checkTopLogprobs(e, 3);
  const s = await client.chat.completions.create({
    model: model.id, messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3, stream: true });
  const streamed = [];
  for await (const chunk of s) for (const c of chunk.choices) streamed.push(...(c.logprobs?.content ?? []));
  assert.deepEqual(streamed.map((e) => e.token), lp.content.map((e) => e.token));
});

test('completion logprobs: tokens, token_logprobs, top_logprobs, text_offset', async () => {
  const r = await client.completions.create({
    model: model.id, prompt: 'The quick brown fox', max_tokens: 8, temperature: 0, logprobs: 2 });
  const lp = r.choices[0].logprobs;
  assert.ok(lp && Array.isArray(lp.tokens), `logprobs is ${JSON.stringify(lp)}`);
  assert.equal(lp.tokens.length, r.usage.completion_tokens);
  assert.equal(lp.tokens.join(''), r.choices[0].text);
  assert.equal(lp.token_logprobs.length, lp.tokens.length);
  assert.equal(lp.top_logprobs.length, lp.tokens.length);
  assert.equal(lp.text_offset.length, lp.tokens.length);
  for (let i = 0; i < lp.tokens.length; ++i) {
    assert.ok(lp.token_logprobs[i] <= 0);
    assert.equal(Object.keys(lp.top_logprobs[i]).length, 2);
  }
});

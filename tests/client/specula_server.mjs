// Shared by the client suites (openai_sdk, robustness, load): starts `specula serve` as a child
// process on a tiny model and stops it, reads its memory, and speaks raw HTTP where a suite needs
// to see exactly what went over the wire. Node's own modules only, so the suites that do not use
// the OpenAI SDK run without `npm ci`.
//
// The program comes from SPECULA_CLI (ctest sets it to the built binary). The model is the
// embedded demo model with its chat tokens (`specula create-demo-model DIR --chat-tokens`),
// written into a fresh temporary folder by each suite: a random-weight Llama whose tokenizer has
// the Llama-3 chat markers, so both /v1/chat/completions and /v1/completions run through the
// real template, tokenizer, engine and scheduler in well under a second per request.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, basename } from 'node:path';
import net from 'node:net';
import http from 'node:http';

export function speculaPath() {
  const path = process.env.SPECULA_CLI;
  if (!path || !existsSync(path))
    throw new Error(`SPECULA_CLI must name the built specula program (got '${path ?? ''}'); ctest sets it`);
  return path;
}

// A temporary folder holding the demo model (with chat tokens); remove it with cleanup().
export function makeDemoModel() {
  const root = mkdtempSync(join(tmpdir(), 'specula-client-'));
  const dir = join(root, 'demo-chat');
  execFileSync(speculaPath(), ['create-demo-model', dir, '--chat-tokens'], { stdio: 'pipe' });
  return { dir, id: basename(dir), cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

// A TCP port nobody listens on now (the kernel picks it; the small race is acceptable in tests).
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Starts `specula serve -m modelDir` on a free port and waits for /health. The returned object
// has baseURL (ending in /v1), port, pid, log() (what the server printed), rssKiB() and stop()
// (SIGTERM; resolves to the exit code, and fails the caller if the server does not exit in time).
export async function startServer(modelDir, extraArgs = []) {
  const port = await freePort();
  const args = ['serve', '-m', modelDir, '--device', 'cpu', '--threads', '1', '--port', String(port), ...extraArgs];
  const child = spawn(speculaPath(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  let exited = null;
  const exitPromise = new Promise((resolve) => child.on('exit', (code, signal) => {
    exited = { code, signal };
    resolve(exited);
  }));
  const deadline = Date.now() + 30000;
  for (;;) {
    if (exited) throw new Error(`specula serve exited (${JSON.stringify(exited)}) before answering /health:\n${log}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`specula serve did not answer /health within 30 s:\n${log}`);
    }
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    await sleep(50);
  }
  return {
    port,
    pid: child.pid,
    baseURL: `http://127.0.0.1:${port}/v1`,
    log: () => log,
    exited: () => exited,
    rssKiB: () => rssKiB(child.pid),
    async stop(seconds = 10) {
      if (exited) return exited.code;
      child.kill('SIGTERM');
      let timer;
      const result = await Promise.race([exitPromise, new Promise((r) => { timer = setTimeout(() => r(null), seconds * 1000); })]);
      clearTimeout(timer);
      if (!result) {
        child.kill('SIGKILL');
        throw new Error(`specula serve did not exit within ${seconds} s of SIGTERM:\n${log}`);
      }
      return result.code;
    },
  };
}

// Resident memory of a process in KiB (VmRSS in /proc/PID/status).
export function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]);
}

// One HTTP request with a raw body (a string or Buffer, sent as given): resolves to
// { status, headers, body } with the body as text. Never throws for an HTTP status.
export function rawRequest(port, { method = 'POST', path, body = '', headers = {} }) {
  return new Promise((resolve, reject) => {
    const data = Buffer.isBuffer(body) ? body : Buffer.from(body);
    const req = http.request({
      host: '127.0.0.1', port, method, path, agent: false,
      headers: { 'Content-Type': 'application/json', 'Content-Length': data.length, ...headers },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data);
  });
}

// Splits a server-sent-event body into its `data:` payloads, checking the framing: every event
// is one `data: ` line followed by a blank line, the last one is [DONE] and nothing follows it.
// Returns the parsed JSON chunks (without [DONE]).
export function parseSse(body) {
  const events = body.split('\n\n');
  if (events.pop() !== '') throw new Error(`stream does not end with a blank line: ${JSON.stringify(body.slice(-200))}`);
  if (events.at(-1) !== 'data: [DONE]') throw new Error(`stream does not end with [DONE]: ${JSON.stringify(body.slice(-200))}`);
  events.pop();
  return events.map((e) => {
    if (!e.startsWith('data: ') || e.includes('\n')) throw new Error(`malformed event ${JSON.stringify(e)}`);
    return JSON.parse(e.slice(6));
  });
}

// The text of a response, streamed or not, chat or completion, and its finish reason.
export function answerOf(endpoint, stream, body) {
  const chat = endpoint.endsWith('chat/completions');
  if (!stream) {
    const j = JSON.parse(body);
    if (!j.choices || j.choices.length !== 1) throw new Error(`expected one choice: ${body}`);
    return { text: chat ? j.choices[0].message.content : j.choices[0].text, finish: j.choices[0].finish_reason, usage: j.usage };
  }
  let text = '';
  let finish = null;
  let usage = null;
  for (const chunk of parseSse(body)) {
    if (chunk.error) throw new Error(`error event in stream: ${JSON.stringify(chunk)}`);
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices ?? []) {
      text += (chat ? choice.delta?.content : choice.text) ?? '';
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return { text, finish, usage };
}

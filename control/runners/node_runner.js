// Reflow MicroSandbox Node.js runner: runs inside the sandbox, plain Node (no npm).
//
// Started as `node node_runner.js [--fds IN,OUT] [--end-marker[=FD]]`. It speaks the length-prefixed
// JSON frames documented in reflow_microsandbox/sandbox/frames.py (4-byte
// big-endian length + UTF-8 JSON object) on a private channel, loads one actor
// script, then runs its process(context) once per "call" frame.
//
// With --fds the launcher has already pointed fd 1/2 at a capture stream, so
// nothing a script writes can reach the channel. Without it the channel is
// stdin/stdout; console and process.stdout/stderr are captured as log frames,
// but raw writes to fd 1 (fs.writeSync(1), child processes) cannot be kept
// off it: Node has no dup2. Launchers should prefer --fds.
//
// Every frame of a call carries the call's id. The code that writes it decides which call
// that is: context methods use the call their context was made for; console and
// process.stdout/stderr use the call of the running code, tracked with AsyncLocalStorage,
// which follows timers, promises and callbacks. So a timer or promise left running by one
// call is still tagged with that call, and the control plane drops what it writes once the
// call has answered. An exception nothing caught (uncaughtException, unhandledRejection) is
// reported for its call as "uncaught": the call fails at once and the control plane
// replaces the sandbox (Node's advice: the process is not safe to go on with).
//
// With --end-marker the runner writes "\0msb-end:<call id>\0\n" to fd 2 (or to FD, a
// launcher's private copy of fd 2: Node cannot dup one) right before each call's final
// frame, so a backend whose fd 2 stream is not ordered with the channel (Docker) can tell
// when it has received everything the call wrote raw.
'use strict';

const { AsyncLocalStorage } = require('async_hooks');
const fs = require('fs');
const net = require('net');
const { Writable } = require('stream');
const util = require('util');
const vm = require('vm');

const RUNNER_FILE = __filename;
const MAX_MESSAGE = 64 * 1024 * 1024;
const MAX_VALUE_DEPTH = 100; // reflow_microsandbox.jsonlimits.MAX_VALUE_DEPTH
const callStore = new AsyncLocalStorage(); // the id of the call the running code belongs to
const currentCall = () => { const id = callStore.getStore(); return id === undefined ? null : id; };
// A UTF-16 code unit that is half of no pair (String.prototype.isWellFormed is Node >= 20;
// Debian 12 ships Node 18).
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const LONE_SURROGATES = new RegExp(LONE_SURROGATE.source, 'g');
const isWellFormed = (text) => !LONE_SURROGATE.test(text);
const wellFormed = (text) => (isWellFormed(text) ? text : text.replace(LONE_SURROGATES, '\uFFFD'));
const END_MARKER_FD = (() => {
  const flag = process.argv.find((arg) => arg === '--end-marker' || arg.startsWith('--end-marker='));
  return flag === undefined ? null : Number(flag.split('=')[1] ?? 2);
})();
const napCell = new Int32Array(new SharedArrayBuffer(4));

// Marks the end of call `id` (see --end-marker). Node may make the pipe non-blocking,
// so a full pipe is retried for up to 2 s; a closed descriptor is given up on at once.
function writeEndMarker(id) {
  if (END_MARKER_FD === null || !Number.isInteger(id)) return;
  const marker = Buffer.from(`\0msb-end:${id}\0\n`, 'latin1');
  for (let tries = 0; tries < 2000; tries++) {
    try {
      fs.writeSync(END_MARKER_FD, marker); // shorter than PIPE_BUF: written whole or not at all
      return;
    } catch (error) {
      if (error.code !== 'EAGAIN') return;
      Atomics.wait(napCell, 0, 0, 1);
    }
  }
}

// Writes all of `data` to `fd` before returning. The descriptor may be non-blocking (it
// is shared with the reading socket): a full pipe is waited on, so a script that writes
// in a loop that never yields is slowed down, and every byte is counted as it is written.
function writeAllSync(fd, data) {
  let offset = 0;
  while (offset < data.length) {
    try {
      offset += fs.writeSync(fd, data, offset);
    } catch (error) {
      if (error.code !== 'EAGAIN') process.exit(0); // the control plane went away
      Atomics.wait(napCell, 0, 0, 1);
    }
  }
}

// The transport in one place: a --connect option would only change this function.
function openTransport(argv) {
  const at = argv.indexOf('--fds');
  if (at >= 0) {
    const [inFd, outFd] = argv[at + 1].split(',').map(Number);
    const input = new net.Socket({ fd: inFd, readable: true, writable: false });
    return { input, write: (data) => writeAllSync(outFd, data) };
  }
  const rawWrite = process.stdout.write.bind(process.stdout);
  return { input: process.stdin, write: (data) => rawWrite(data) };
}

class StateError extends Error {
  constructor(message) { super(message); this.name = 'StateError'; }
}

class ScriptError extends Error {
  constructor(message) { super(message); this.name = 'ScriptError'; }
}

// Deepest nesting of JSON text (strings skipped); stops counting past `limit`.
function nestingExceeds(json, limit) {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (inString) {
      if (c === 92) i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 || c === 123) { if (++depth > limit) return true; }
    else if (c === 93 || c === 125) depth--;
  }
  return false;
}

// `value` as strict JSON text, or a ScriptError saying what was wrong with it: NaN or
// Infinity, a string that is not valid Unicode (a lone surrogate), too deep a nesting.
function strictJson(value, what, depth = MAX_VALUE_DEPTH, envelope = 0) {
  let json;
  try {
    json = JSON.stringify(value === undefined ? null : value, (key, item) => {
      if (typeof item === 'number' && !Number.isFinite(item)) {
        throw new ScriptError(`${what} is not strict JSON: NaN and Infinity cannot be sent (use null or a string instead)`);
      }
      const bad = typeof item === 'string' && !isWellFormed(item) ? item : !isWellFormed(key) ? key : null;
      if (bad !== null) {
        const at = LONE_SURROGATE.exec(bad)[0];
        const point = `U+${at.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`;
        throw new ScriptError(`${what} holds a lone surrogate (${point}), which is not valid Unicode: UTF-8 and so JSON-RPC cannot carry it (send bytes as base64, or clean the text)`);
      }
      return item;
    });
  } catch (error) {
    if (error instanceof ScriptError) throw error;
    if (error instanceof RangeError) throw new ScriptError(`${what} nests deeper than ${depth} levels (the limit)`);
    // A getter or toJSON may throw anything (a string, null, a plain object).
    let reason;
    try { reason = error instanceof Error ? error.message : String(error); } catch (e) { reason = '<a value that cannot be shown>'; }
    throw new ScriptError(`${what} is not JSON-serializable: ${reason}`);
  }
  if (json === undefined) json = 'null'; // a function or a symbol
  if (nestingExceeds(json, depth + envelope)) throw new ScriptError(`${what} nests deeper than ${depth} levels (the limit)`);
  return json;
}

class Channel {
  constructor(transport, onMessage) {
    this.write = transport.write;
    this.chunks = [];
    this.size = 0;
    transport.input.on('data', (chunk) => this.feed(chunk, onMessage));
    transport.input.on('end', () => process.exit(0));
    transport.input.on('error', () => process.exit(0));
  }

  send(message) {
    this.sendText(JSON.stringify(message));
  }

  // One frame whose body is the JSON text `text` (well-formed: checked by the caller).
  sendText(text) {
    const body = Buffer.from(text, 'utf8');
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32BE(body.length, 0);
    this.write(Buffer.concat([header, body]));
  }

  feed(chunk, onMessage) {
    this.chunks.push(chunk);
    this.size += chunk.length;
    let buffer = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    let offset = 0;
    while (buffer.length - offset >= 4) {
      const size = buffer.readUInt32BE(offset);
      if (size > MAX_MESSAGE) process.exit(3);
      if (buffer.length - offset - 4 < size) break;
      const body = buffer.toString('utf8', offset + 4, offset + 4 + size);
      offset += 4 + size;
      onMessage(JSON.parse(body));
    }
    buffer = buffer.subarray(offset);
    this.chunks = buffer.length ? [buffer] : [];
    this.size = buffer.length;
  }
}

function trimStack(error, filename) {
  if (!(error instanceof Error) || typeof error.stack !== 'string') {
    return `Error: ${String(error)}\n`;
  }
  const lines = error.stack.split('\n');
  const head = [];
  let index = 0;
  while (index < lines.length && !/^\s+at /.test(lines[index])) head.push(lines[index++]);
  const frames = lines.slice(index).filter(
    (line) => line.includes(filename) && !line.includes(RUNNER_FILE));
  return [...head, ...frames].join('\n') + '\n';
}

function jsdocMetadata(source) {
  const tag = (name) => {
    const match = new RegExp(`@${name}\\s+([^\\s*]+)`).exec(source);
    return match ? match[1] : undefined;
  };
  const all = (name) => Array.from(source.matchAll(new RegExp(`@${name}\\s+([^\\s*]+)`, 'g')), (m) => m[1]);
  const component = tag('component');
  if (component === undefined) return undefined;
  const metadata = { component };
  const inports = all('inport');
  const outports = all('outport');
  if (inports.length) metadata.inports = inports;
  if (outports.length) metadata.outports = outports;
  return metadata;
}

class Runner {
  constructor(transport) {
    this.channel = new Channel(transport, (message) => this.dispatch(message));
    this.actor = null;
    this.filename = 'actor.js';
    this.callId = null;
    this.abort = null;
    this.stateSeq = 0;
    this.pending = new Map();
    this.queue = Promise.resolve();
  }

  log(level, message, call) {
    this.channel.send({ type: 'log', call: call === undefined ? null : call, level, message: wellFormed(String(message)) });
  }

  state(call, op, key, fields) {
    if (this.callId === null || call !== this.callId) {
      return Promise.reject(new StateError('state is only available while process() runs: this call has already ended'));
    }
    const id = ++this.stateSeq;
    this.channel.send({ type: 'state', call, id, op, key: wellFormed(String(key)), ...fields });
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
  }

  dispatch(message) {
    if (message.type === 'state_result') {
      const waiter = this.pending.get(message.id);
      if (!waiter) return;
      this.pending.delete(message.id);
      if (message.ok) waiter.resolve(message.value === undefined ? null : message.value);
      else waiter.reject(new StateError(message.error || 'state request failed'));
      return;
    }
    // Loads and calls run one at a time, in arrival order.
    this.queue = this.queue.then(() => (message.type === 'load' ? this.load(message) : this.call(message)));
  }

  errorFrame(kind, error, call) {
    const isError = error instanceof Error;
    let message;
    try { message = isError ? error.message : String(error); } catch (e) { message = '<an error that cannot be shown>'; }
    const oom = isError && error instanceof RangeError && /allocation failed|Array buffer allocation/i.test(message);
    return {
      type: 'error',
      call: call === undefined ? null : call,
      kind: oom ? 'memory' : kind,
      error_type: wellFormed(isError ? String(error.name) : typeof error),
      message: wellFormed(String(message)),
      traceback: wellFormed(trimStack(error, this.filename)),
    };
  }

  sendError(kind, error, call) {
    this.channel.send(this.errorFrame(kind, error, call));
  }

  // An exception nothing caught, from code of call `call` (null: no call). It fails that
  // call at once if it still runs; the control plane then replaces the sandbox.
  uncaught(error, call) {
    const frame = this.errorFrame('script_error', error, call);
    frame.type = 'uncaught';
    frame.fatal = true;
    if (call !== null && call === this.callId && this.abort !== null) {
      writeEndMarker(call);
      this.channel.send(frame);
      this.abort();
      return;
    }
    this.channel.send(frame);
  }

  load(message) {
    if (this.actor) return;
    this.filename = message.filename || 'actor.js';
    const source = message.source;
    const module = { exports: {} };
    let found;
    try {
      const body = `${source}\n;return {` +
        'metadata: typeof metadata === "undefined" ? undefined : metadata,' +
        'named: typeof process === "function" ? process : undefined,' +
        'run: typeof run === "function" ? run : undefined};';
      const wrapper = vm.compileFunction(body, ['module', 'exports', 'require'], { filename: this.filename });
      found = wrapper.call(module.exports, module, module.exports, require);
    } catch (error) {
      this.sendError('load_error', error, null);
      return;
    }
    const exported = module.exports;
    let fn = null;
    if (typeof exported === 'function') fn = exported;
    else if (exported && typeof exported.process === 'function') fn = exported.process;
    else if (exported && typeof exported.run === 'function') fn = exported.run;
    else if (typeof found.named === 'function') fn = found.named;
    else if (typeof found.run === 'function') fn = found.run;
    if (!fn) {
      this.channel.send({
        type: 'error', call: null, kind: 'load_error', error_type: 'LoadError',
        message: 'the script exports no process(context) function and defines none ' +
          '(module.exports = { process: async (context) => ... }, or async function run(context))',
        traceback: '',
      });
      return;
    }
    let metadata = found.metadata;
    if (metadata === undefined && exported && typeof exported.metadata === 'object') metadata = exported.metadata;
    if (metadata === undefined) metadata = jsdocMetadata(source);
    if (metadata === undefined || metadata === null || typeof metadata !== 'object') {
      metadata = { component: fn.name || 'process' };
    }
    try {
      metadata = JSON.parse(strictJson(metadata, 'metadata'));
    } catch (error) {
      metadata = { component: wellFormed(String(metadata.component || fn.name || 'process')) };
    }
    this.actor = fn;
    this.channel.send({ type: 'loaded', metadata });
  }

  makeContext(call, data) {
    const runner = this;
    const payload = data.payload || {};
    const context = {
      payload,
      config: data.config || {},
      actorId: data.actor_id || '',
      actor_id: data.actor_id || '',
      namespace: data.namespace || 'default',
      timestamp: data.timestamp || 0,
      getInput(port, fallback = null) {
        return Object.prototype.hasOwnProperty.call(payload, port) ? payload[port] : fallback;
      },
      async sendOutput(port, value) {
        const json = strictJson(value, `sendOutput(${JSON.stringify(port)}) value`);
        const head = JSON.stringify({ type: 'output', call, port: wellFormed(String(port)) });
        runner.channel.sendText(`${head.slice(0, -1)},"data":${json}}`);
      },
      getState(key, fallback = null) { return runner.state(call, 'get', key, { default: fallback }); },
      async setState(key, value) {
        const text = strictJson(value, `setState(${JSON.stringify(key)}) value`);
        const limit = data.state_value_limit;
        const size = Buffer.byteLength(text, 'utf8');
        if (Number.isInteger(limit) && size > limit) {
          throw new StateError(`setState(${JSON.stringify(key)}) value is ${size} bytes as JSON, ` +
            `more than the ${limit} a state value may be (the smaller of the store's limit and ` +
            'sandbox.max_output_bytes, less frame room)');
        }
        const json = JSON.parse(text);
        await runner.state(call, 'set', key, { value: json });
      },
      async deleteState(key) { await runner.state(call, 'delete', key, {}); },
      incrementState(key, by = 1) { return runner.state(call, 'increment', key, { by }); },
      log(...args) { runner.log('info', util.format(...args), call); },
    };
    context.get_input = context.getInput;
    context.send_output = context.sendOutput;
    context.get_state = context.getState;
    context.set_state = context.setState;
    context.delete_state = context.deleteState;
    context.increment_state = context.incrementState;
    return context;
  }

  async call(message) {
    const id = message.call;
    if (!this.actor) {
      writeEndMarker(id);
      this.channel.send({
        type: 'error', call: id, kind: 'load_error', error_type: 'LoadError',
        message: 'no actor is loaded in this sandbox', traceback: '',
      });
      return;
    }
    this.callId = id;
    let aborted = false;
    const abort = new Promise((resolve) => {
      this.abort = () => { aborted = true; resolve(); };
    });
    try {
      const context = this.makeContext(id, message.context || {});
      const value = await Promise.race([callStore.run(id, () => this.actor(context)), abort]);
      if (aborted) return; // an uncaught exception of this call ended it (see uncaught)
      let outputs;
      if (value === undefined || value === null) outputs = {};
      else if (typeof value === 'object' && !Array.isArray(value)) outputs = value;
      else outputs = { output: value };
      const json = strictJson(outputs, 'the returned value', MAX_VALUE_DEPTH, 1);
      writeEndMarker(id);
      const lingering = childrenLeft() ? ',"lingering":true' : '';
      this.channel.sendText(`{"type":"result","call":${JSON.stringify(id)}${lingering},"outputs":${json}}`);
    } catch (error) {
      if (aborted) return;
      writeEndMarker(id);
      const frame = this.errorFrame(error instanceof StateError ? 'state_error' : 'script_error', error, id);
      if (childrenLeft()) frame.lingering = true;
      this.channel.send(frame);
    } finally {
      this.callId = null;
      this.abort = null;
      for (const waiter of this.pending.values()) waiter.reject(new StateError('the call has ended'));
      this.pending.clear();
    }
  }
}

// Whether child processes this runner started still run (their output could otherwise
// reach a later call: the control plane replaces a sandbox whose call left some).
function childrenLeft() {
  return process.getActiveResourcesInfo().includes('ProcessWrap');
}

// console.* and process.stdout/stderr become log frames of the running code's call. The
// real stdout/stderr streams are never created: creating them would make fd 1/2
// non-blocking, and a script's own fs.writeSync(1, ...) would then fail with EAGAIN
// instead of waiting while the control plane reads (and counts) what it wrote.
function captureConsole(runner) {
  const levels = { log: 'info', info: 'info', debug: 'debug', warn: 'warning', error: 'error', trace: 'debug' };
  for (const [name, level] of Object.entries(levels)) {
    console[name] = (...args) => runner.log(level, util.format(...args), currentCall());
  }
  const logStream = (level, fd) => {
    const stream = new Writable({
      decodeStrings: false,
      write(chunk, encoding, callback) {
        runner.log(level, typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'), currentCall());
        callback();
      },
    });
    stream.fd = fd;
    stream.isTTY = false;
    return stream;
  };
  const streams = { stdout: logStream('info', 1), stderr: logStream('error', 2) };
  for (const [name, stream] of Object.entries(streams)) {
    Object.defineProperty(process, name, { configurable: true, enumerable: true, get: () => stream });
  }
}

function main() {
  const transport = openTransport(process.argv);
  const runner = new Runner(transport);
  captureConsole(runner);
  process.on('uncaughtException', (error) => runner.uncaught(error, currentCall()));
  process.on('unhandledRejection', (reason) => runner.uncaught(reason, currentCall()));
  runner.channel.send({ type: 'ready', language: 'nodejs', pid: process.pid });
}

main();

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
// With --end-marker the runner writes "\0msb-end:<call id>\0\n" to fd 2 (or to FD, a
// launcher's private copy of fd 2: Node cannot dup one) right before each call's final
// frame, so a backend whose fd 2 stream is not ordered with the channel (Docker) can tell
// when it has received everything the call wrote raw.
'use strict';

const fs = require('fs');
const net = require('net');
const util = require('util');
const vm = require('vm');

const RUNNER_FILE = __filename;
const MAX_MESSAGE = 64 * 1024 * 1024;
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

// The transport in one place: a --connect option would only change this function.
function openTransport(argv) {
  const at = argv.indexOf('--fds');
  if (at >= 0) {
    const [inFd, outFd] = argv[at + 1].split(',').map(Number);
    const input = new net.Socket({ fd: inFd, readable: true, writable: inFd === outFd });
    const output = inFd === outFd ? input : new net.Socket({ fd: outFd, readable: false, writable: true });
    return { input, write: (data) => output.write(data) };
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

function strictJson(value, what) {
  try {
    return JSON.stringify(value === undefined ? null : value, (key, item) => {
      if (typeof item === 'number' && !Number.isFinite(item)) {
        throw new ScriptError(`${what} is not strict JSON: NaN and Infinity cannot be sent (use null or a string instead)`);
      }
      return item;
    });
  } catch (error) {
    if (error instanceof ScriptError) throw error;
    throw new ScriptError(`${what} is not JSON-serializable: ${error.message}`);
  }
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
    const body = Buffer.from(JSON.stringify(message), 'utf8');
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
    this.stateSeq = 0;
    this.pending = new Map();
    this.queue = Promise.resolve();
  }

  log(level, message) {
    this.channel.send({ type: 'log', level, message });
  }

  state(op, key, fields) {
    if (this.callId === null) {
      return Promise.reject(new StateError('state is only available while process() runs'));
    }
    const id = ++this.stateSeq;
    this.channel.send({ type: 'state', id, op, key: String(key), ...fields });
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

  sendError(kind, error, id) {
    const isError = error instanceof Error;
    const message = isError ? error.message : String(error);
    const oom = isError && error instanceof RangeError && /allocation failed|Array buffer allocation/i.test(message);
    this.channel.send({
      type: 'error',
      id: id === undefined ? null : id,
      kind: oom ? 'memory' : kind,
      error_type: isError ? error.name : typeof error,
      message,
      traceback: trimStack(error, this.filename),
    });
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
        'named: typeof process === "function" ? process : undefined};';
      const wrapper = vm.compileFunction(body, ['module', 'exports', 'require'], { filename: this.filename });
      found = wrapper.call(module.exports, module, module.exports, require);
    } catch (error) {
      this.sendError('load_error', error);
      return;
    }
    const exported = module.exports;
    let fn = null;
    if (typeof exported === 'function') fn = exported;
    else if (exported && typeof exported.process === 'function') fn = exported.process;
    else if (typeof found.named === 'function') fn = found.named;
    if (!fn) {
      this.channel.send({
        type: 'error', id: null, kind: 'load_error', error_type: 'LoadError',
        message: 'the script exports no process(context) function and defines none', traceback: '',
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
      metadata = { component: String(metadata.component || fn.name || 'process') };
    }
    this.actor = fn;
    this.channel.send({ type: 'loaded', metadata });
  }

  makeContext(data) {
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
        const data = JSON.parse(strictJson(value, `sendOutput(${JSON.stringify(port)}) value`));
        runner.channel.send({ type: 'output', port: String(port), data });
      },
      getState(key, fallback = null) { return runner.state('get', key, { default: fallback }); },
      async setState(key, value) {
        const json = JSON.parse(strictJson(value, `setState(${JSON.stringify(key)}) value`));
        await runner.state('set', key, { value: json });
      },
      async deleteState(key) { await runner.state('delete', key, {}); },
      incrementState(key, by = 1) { return runner.state('increment', key, { by }); },
      log(...args) { runner.log('info', util.format(...args)); },
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
    const id = message.id;
    if (!this.actor) {
      writeEndMarker(id);
      this.channel.send({
        type: 'error', id, kind: 'load_error', error_type: 'LoadError',
        message: 'no actor is loaded in this sandbox', traceback: '',
      });
      return;
    }
    this.callId = id;
    try {
      let value = await this.actor(this.makeContext(message.context || {}));
      let outputs;
      if (value === undefined || value === null) outputs = {};
      else if (typeof value === 'object' && !Array.isArray(value)) outputs = value;
      else outputs = { output: value };
      outputs = JSON.parse(strictJson(outputs, 'the returned value'));
      writeEndMarker(id);
      this.channel.send({ type: 'result', id, outputs });
    } catch (error) {
      writeEndMarker(id);
      this.sendError(error instanceof StateError ? 'state_error' : 'script_error', error, id);
    } finally {
      this.callId = null;
      for (const waiter of this.pending.values()) waiter.reject(new StateError('the call has ended'));
      this.pending.clear();
    }
  }
}

function captureConsole(runner) {
  const levels = { log: 'info', info: 'info', debug: 'debug', warn: 'warning', error: 'error', trace: 'debug' };
  for (const [name, level] of Object.entries(levels)) {
    console[name] = (...args) => runner.log(level, util.format(...args));
  }
  const streamWriter = (level) => (chunk, encoding, callback) => {
    runner.log(level, typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    const done = typeof encoding === 'function' ? encoding : callback;
    if (typeof done === 'function') process.nextTick(done);
    return true;
  };
  Object.defineProperty(process.stdout, 'write', { value: streamWriter('info'), writable: true });
  Object.defineProperty(process.stderr, 'write', { value: streamWriter('error'), writable: true });
}

function main() {
  const transport = openTransport(process.argv);
  const runner = new Runner(transport);
  captureConsole(runner);
  process.on('uncaughtException', (error) => {
    writeEndMarker(runner.callId);
    runner.sendError('script_error', error, runner.callId);
  });
  process.on('unhandledRejection', (reason) => runner.log('error', `unhandled rejection: ${trimStack(reason, runner.filename)}`));
  runner.channel.send({ type: 'ready', language: 'nodejs', pid: process.pid });
}

main();

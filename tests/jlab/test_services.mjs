// The JupyterLab frontend's own client library (@jupyterlab/services, pinned in package.json)
// against a real kbox gateway: start a kernel, execute, read iopub stream and display_data,
// a comm message with binary buffers over the v1 WebSocket subprotocol, a second connection
// seeing the first one's iopub, interrupt, restart, shutdown.
//
// The gateway: KBOX_GATEWAY_URL + KBOX_GATEWAY_TOKEN for one already running, or
// KBOX_GATEWAY_BIN to start one here (launcher from KBOX_TEST_LAUNCHER, default runc, as in
// tests/integration); a gateway started here must stop cleanly on SIGTERM and leave nothing
// behind. Run: `./run.sh` (npm ci into a scratch copy, then the test).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { KernelManager, ServerConnection } = require('@jupyterlab/services');
const WebSocket = require('ws');

const V1 = 'v1.kernel.websocket.jupyter.org';
const STEP_MS = 30000; // every single wait is bounded; a hang is a failure, not a stuck CI

let gateway = null; // { proc, stateDir, log } when started here
let baseUrl = process.env.KBOX_GATEWAY_URL || '';
let token = process.env.KBOX_GATEWAY_TOKEN || '';
let settings;
let manager;

function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

function until(pred, ms, what) {
  return withTimeout(
    new Promise(resolve => {
      const tick = () => (pred() ? resolve() : setTimeout(tick, 20));
      tick();
    }),
    ms,
    what
  );
}

// What a stopped gateway left of its own: the Python suites' check (tests/integration/conftest.py:
// processes, runc containers, loop devices, mounts, network namespaces, cgroups), so both test
// the same thing. The state dir goes in the environment: a process whose command line named it
// would count as a leftover.
function leftovers(stateDir) {
  const dir = process.env.KBOX_INTEGRATION_DIR;
  assert.ok(dir, 'KBOX_INTEGRATION_DIR (tests/integration, for its leftovers check) is set by run.sh');
  const code = [
    'import json, os, sys',
    'sys.path.insert(0, os.environ["KBOX_INTEGRATION_DIR"])',
    'from conftest import no_leftovers',
    'print(json.dumps(no_leftovers(os.environ["KBOX_JLAB_STATE_DIR"])))'
  ].join('\n');
  const out = execFileSync(process.env.KBOX_PYTHON || '/usr/bin/python3', ['-B', '-c', code], {
    env: { ...process.env, KBOX_JLAB_STATE_DIR: stateDir },
    encoding: 'utf8',
    timeout: STEP_MS
  });
  return JSON.parse(out);
}

async function startGateway() {
  const bin = process.env.KBOX_GATEWAY_BIN;
  assert.ok(bin, 'set KBOX_GATEWAY_BIN (or KBOX_GATEWAY_URL and KBOX_GATEWAY_TOKEN)');
  const stateDir = mkdtempSync(join(tmpdir(), 'kbox-jlab-'));
  token = 'jlab-' + Math.random().toString(16).slice(2) + Math.random().toString(16).slice(2);
  // Same defaults as tests/integration/conftest.py: the product's runc launcher unless told.
  const args = ['--port', '0', '--state-dir', stateDir,
    '--launcher', process.env.KBOX_TEST_LAUNCHER || 'runc',
    '--kernel', process.env.KBOX_TEST_KERNEL || 'ipykernel',
    '--min-idle-workers', '1', '--max-total-workers', '8'];
  // setpriv --pdeathsig: should this test process die without its after() hook (killed by a
  // ctest timeout), the gateway gets SIGTERM and stops its workers instead of outliving it.
  const proc = spawn('setpriv', ['--pdeathsig', 'TERM', '--', bin, ...args], {
    env: { ...process.env, AUTH_TOKEN: token },
    stdio: ['ignore', 'ignore', 'pipe']
  });
  gateway = { proc, stateDir, log: '' };
  // Its whole log, for a failure's post-mortem, next to the test (the work directory).
  const logPath = join(process.cwd(), 'gateway.log');
  const logFile = createWriteStream(logPath);
  proc.stderr.pipe(logFile);
  console.log(`gateway log: ${logPath}`);
  const exited = new Promise(resolve => proc.on('exit', (code, signal) => resolve({ code, signal })));
  gateway.exited = exited;
  const port = await withTimeout(
    new Promise((resolve, reject) => {
      exited.then(({ code, signal }) => reject(new Error(`gateway exited (${code ?? signal}):\n${gateway.log}`)));
      let pending = '';
      proc.stderr.on('data', chunk => {
        const text = chunk.toString();
        gateway.log += text;
        const lines = (pending + text).split('\n');
        pending = lines.pop(); // an unfinished line waits for the next chunk
        for (const line of lines) {
          try {
            const j = JSON.parse(line);
            if (j.msg === 'listening' && j.port) resolve(j.port);
          } catch {
            /* not a JSON log line */
          }
        }
      });
    }),
    STEP_MS,
    'gateway listening'
  );
  baseUrl = `http://127.0.0.1:${port}`;
}

async function api(method, path, body) {
  const r = await fetch(baseUrl + path, {
    method,
    headers: { Authorization: `token ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

// Runs code on a kernel connection; resolves with the reply and every iopub message of it.
// ipykernel aborts (status "aborted", nothing run) requests that reach it in the moment after
// a cell failed with stop_on_error, even after that cell's idle, as any frontend sees; a cell
// that follows the error test is asked again then (the Python suites' execute_after_error).
async function run(kernel, code, what = code) {
  for (let attempt = 1; ; attempt++) {
    const iopub = [];
    const future = kernel.requestExecute({ code, stop_on_error: true });
    future.onIOPub = msg => {
      iopub.push(msg);
    };
    const reply = await withTimeout(future.done, STEP_MS, `execute ${what}`);
    if (reply.content.status !== 'aborted' || attempt === 5) return { reply, iopub, future };
    await new Promise(resolve => setTimeout(resolve, 200));
  }
}

function streamText(iopub) {
  return iopub
    .filter(m => m.header.msg_type === 'stream' && m.content.name === 'stdout')
    .map(m => m.content.text)
    .join('');
}

before(async () => {
  if (!baseUrl) await startGateway();
  settings = ServerConnection.makeSettings({
    baseUrl,
    wsUrl: baseUrl.replace(/^http/, 'ws'),
    token,
    appendToken: true, // REST calls use the Authorization header, the WebSocket ?token=
    WebSocket
  });
  manager = new KernelManager({ serverSettings: settings });
  await withTimeout(manager.ready, STEP_MS, 'KernelManager ready');
});

after(async () => {
  if (manager) manager.dispose();
  if (!gateway) return;
  const { proc, stateDir } = gateway;
  let clean = false;
  try {
    proc.kill('SIGTERM');
    const { code, signal } = await withTimeout(gateway.exited, STEP_MS, 'gateway stop').catch(e => {
      proc.kill('SIGKILL');
      throw new Error(`${e.message}\n${gateway.log.slice(-20000)}`);
    });
    assert.equal(code, 0, `gateway exit on SIGTERM: ${code ?? signal}\n${gateway.log.slice(-20000)}`);
    assert.deepEqual(
      leftovers(stateDir),
      {},
      `the stopped gateway left these behind; ${stateDir} is kept (a gateway started on it sweeps them)`
    );
    clean = true;
  } finally {
    // Only when nothing is left: loop devices are backed by files in it, disks mounted in it.
    if (clean) rmSync(stateDir, { recursive: true, force: true });
    else console.error(`tests/jlab: state dir kept: ${stateDir}`);
  }
});

test('startNew, execute, stream and display_data, comm buffers over v1, interrupt, restart, shutdown', { timeout: 240000 }, async t => {
  const kernel = await withTimeout(manager.startNew({ name: 'python3' }), STEP_MS, 'startNew');
  assert.match(kernel.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const info = await withTimeout(kernel.info, STEP_MS, 'kernel info');
  assert.equal(info.language_info.name, 'python');
  await until(() => kernel.connectionStatus === 'connected', STEP_MS, 'connected');
  // The client offered the v1 subprotocol and the gateway took it.
  assert.equal(kernel._ws.protocol, V1);

  const statuses = [];
  kernel.statusChanged.connect((_, s) => statuses.push(s));

  await t.test('execute: stream, display_data, execute_result', async () => {
    const { reply, iopub } = await run(
      kernel,
      "print('hello from kbox')\n" +
        "from IPython.display import display\n" +
        "display({'text/plain': 'plain repr', 'text/html': '<b>bold</b>'}, raw=True)\n" +
        '6 * 7'
    );
    assert.equal(reply.content.status, 'ok');
    assert.equal(streamText(iopub), 'hello from kbox\n');
    const dd = iopub.find(m => m.header.msg_type === 'display_data');
    assert.ok(dd, 'display_data received');
    assert.equal(dd.content.data['text/html'], '<b>bold</b>');
    assert.equal(dd.content.data['text/plain'], 'plain repr');
    const er = iopub.find(m => m.header.msg_type === 'execute_result');
    assert.equal(er.content.data['text/plain'], '42');
    const states = iopub.filter(m => m.header.msg_type === 'status').map(m => m.content.execution_state);
    assert.deepEqual(states, ['busy', 'idle']);
  });

  await t.test('error with traceback', async () => {
    const { reply, iopub } = await run(kernel, '1/0');
    assert.equal(reply.content.status, 'error');
    const err = iopub.find(m => m.header.msg_type === 'error');
    assert.equal(err.content.ename, 'ZeroDivisionError');
    assert.ok(err.content.traceback.length > 0);
  });

  await t.test('comm message with binary buffers round-trips (v1 binary frames)', async () => {
    const { reply: registered } = await run(
      kernel,
      'def _kbox_echo(comm, open_msg):\n' +
        '    @comm.on_msg\n' +
        '    def _r(msg):\n' +
        "        bufs = [bytes(b)[::-1] for b in msg['buffers']]\n" +
        "        comm.send({'echo': msg['content']['data'], 'sizes': [len(b) for b in bufs]}, buffers=bufs)\n" +
        "get_ipython().kernel.comm_manager.register_target('kbox_echo', _kbox_echo)\n"
    );
    assert.equal(registered.content.status, 'ok');
    const comm = kernel.createComm('kbox_echo');
    const got = new Promise(resolve => {
      comm.onMsg = msg => resolve(msg);
    });
    await withTimeout(comm.open({}).done, STEP_MS, 'comm open');
    const big = new Uint8Array(200000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
    comm.send({ hello: 'buffers' }, {}, [new Uint8Array([0, 1, 2, 255]), big]);
    const msg = await withTimeout(got, STEP_MS, 'comm echo');
    assert.deepEqual(msg.content.data.echo, { hello: 'buffers' });
    assert.deepEqual(msg.content.data.sizes, [4, 200000]);
    assert.equal(msg.buffers.length, 2);
    const b0 = new Uint8Array(msg.buffers[0].buffer, msg.buffers[0].byteOffset, msg.buffers[0].byteLength);
    assert.deepEqual(Array.from(b0), [255, 2, 1, 0]);
    const b1 = new Uint8Array(msg.buffers[1].buffer, msg.buffers[1].byteOffset, msg.buffers[1].byteLength);
    assert.equal(b1.length, big.length);
    for (let i = 0; i < big.length; i++) {
      if (b1[i] !== big[big.length - 1 - i]) assert.fail(`buffer byte ${i} differs`);
    }
    comm.close();
  });

  await t.test('a second connection sees the first one\'s iopub', async () => {
    const other = manager.connectTo({ model: { id: kernel.id, name: kernel.name } });
    try {
      await withTimeout(other.info, STEP_MS, 'second connection kernel info');
      const seen = [];
      other.iopubMessage.connect((_, msg) => seen.push(msg));
      const { reply } = await run(kernel, "print('seen by both')");
      assert.equal(reply.content.status, 'ok');
      await until(
        () => seen.some(m => m.header.msg_type === 'stream' && m.content.text === 'seen by both\n'),
        STEP_MS,
        'stream on the second connection'
      );
      const model = await api('GET', `/api/kernels/${kernel.id}`);
      assert.equal(model.status, 200);
      assert.ok(model.body.connections >= 2, JSON.stringify(model.body));
    } finally {
      other.dispose();
    }
  });

  await t.test('interrupt stops running code and keeps the state', async () => {
    await run(kernel, 'kept = 123');
    const iopub = [];
    const future = kernel.requestExecute({ code: 'import time\nfor _ in range(600): time.sleep(0.1)' });
    future.onIOPub = msg => iopub.push(msg);
    await until(() => iopub.some(m => m.header.msg_type === 'execute_input'), STEP_MS, 'running');
    await new Promise(r => setTimeout(r, 300));
    const t0 = Date.now();
    await withTimeout(kernel.interrupt(), STEP_MS, 'interrupt');
    const reply = await withTimeout(future.done.catch(e => e), STEP_MS, 'interrupted reply');
    assert.ok(Date.now() - t0 < 10000, 'interrupt took too long');
    // future.done rejects on an error reply in services; either way the content says so.
    const content = reply.content;
    assert.equal(content.status, 'error');
    assert.equal(content.ename, 'KeyboardInterrupt');
    const { iopub: after } = await run(kernel, 'print(kept)');
    assert.equal(streamText(after), '123\n');
  });

  await t.test('restart gives a fresh kernel on the same id', async () => {
    await run(kernel, 'before_restart = 1');
    const sessionBefore = kernel._kernelSession;
    await withTimeout(kernel.restart(), STEP_MS, 'restart');
    await withTimeout(kernel.info, STEP_MS, 'info after restart');
    await until(() => kernel.connectionStatus === 'connected', STEP_MS, 'reconnected');
    assert.ok(statuses.includes('restarting'), `statuses: ${statuses}`);
    const { reply, iopub } = await run(kernel, "print('before_restart' in globals())");
    assert.equal(reply.content.status, 'ok');
    assert.equal(streamText(iopub), 'False\n');
    assert.notEqual(kernel._kernelSession, sessionBefore);
    const model = await api('GET', `/api/kernels/${kernel.id}`);
    assert.equal(model.status, 200);
  });

  await t.test('shutdown removes the kernel', async () => {
    const id = kernel.id;
    await withTimeout(kernel.shutdown(), STEP_MS, 'shutdown');
    assert.equal(kernel.status, 'dead');
    const model = await api('GET', `/api/kernels/${id}`);
    assert.equal(model.status, 404);
    const list = await api('GET', '/api/kernels');
    assert.ok(!list.body.some(k => k.id === id));
  });
});

test('legacy protocol client (no subprotocol offered) executes too', { timeout: 120000 }, async () => {
  const legacy = ServerConnection.makeSettings({ ...settings, WebSocket: class extends WebSocket {
    constructor(url) {
      super(url); // offers no subprotocol, as jupyter_server's gateway client does
    }
  } });
  const mgr = new KernelManager({ serverSettings: legacy });
  await withTimeout(mgr.ready, STEP_MS, 'manager ready');
  const kernel = await withTimeout(mgr.startNew({ name: 'python3' }), STEP_MS, 'startNew');
  try {
    await withTimeout(kernel.info, STEP_MS, 'kernel info');
    assert.equal(kernel._ws.protocol, '');
    const { reply, iopub } = await run(kernel, "print('legacy ok')");
    assert.equal(reply.content.status, 'ok');
    assert.equal(streamText(iopub), 'legacy ok\n');
  } finally {
    try {
      await withTimeout(kernel.shutdown(), STEP_MS, 'shutdown');
    } finally {
      mgr.dispose(); // even after a failure: its polls would keep the test process alive
    }
  }
});

test('a bad token is refused', async () => {
  const r = await fetch(baseUrl + '/api/kernels', { headers: { Authorization: 'token wrong' } });
  assert.equal(r.status, 401);
  await r.text();
});

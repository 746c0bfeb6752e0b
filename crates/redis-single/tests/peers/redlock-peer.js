// A node-redlock peer for fencelock's interop tests (crates/redis-single/tests/interop_node.rs
// and crates/redlock/tests/interop_node.rs). node-redlock 4.2.0 with ioredis, installed
// by the tests with the machine's npm (pinned versions, see fencelock_testkit::interop).
//
//   node redlock-peer.js hold PORTS RESOURCE TTL_MS WAIT_MS
//     connects, prints `ready`, takes the lock (retrying every 20 ms, at most WAIT_MS),
//     prints `held VALUE`, waits
//     for a line on stdin, releases, prints `released`, exits.
//   node redlock-peer.js loop PORTS RESOURCE TTL_MS WAIT_MS ROUNDS LOG WHO
//     ROUNDS times: takes the lock, appends `enter WHO -` to LOG, holds 20 ms, appends
//     `exit WHO`, releases.
//
// PORTS: comma-separated loopback ports (one: single Redis; three: Redlock quorum).
// Exits 2 when the lock could not be taken within WAIT_MS, 3 on a Redis error.
'use strict';
const fs = require('fs');
const readline = require('readline');
const Redis = require('ioredis');
const Redlock = require('redlock');

const [mode, ports, resource, ttlText, waitText, rounds, log, who] = process.argv.slice(2);
const ttl = Number(ttlText);
const wait = Number(waitText);
const clients = ports.split(',').map((p) => new Redis({ host: '127.0.0.1', port: Number(p), maxRetriesPerRequest: 1 }));
const retryDelay = 20;
const redlock = new Redlock(clients, {
  retryCount: Math.max(1, Math.ceil(wait / retryDelay)),
  retryDelay,
  retryJitter: 5,
});

function finish(code) {
  Promise.all(clients.map((c) => c.quit().catch(() => {}))).then(() => process.exit(code));
}

async function take() {
  try {
    return await redlock.lock(resource, ttl);
  } catch (e) {
    if (e instanceof Redlock.LockError) {
      process.stdout.write(`timeout ${e.message}\n`);
      finish(2);
      return null;
    }
    throw e;
  }
}

async function hold() {
  // Connected to every server before the first attempt: the test times hand-offs from here.
  await Promise.all(clients.map((c) => c.ping()));
  process.stdout.write('ready\n');
  const lock = await take();
  if (!lock) return;
  process.stdout.write(`held ${lock.value}\n`);
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise((resolve) => rl.once('line', resolve).once('close', resolve));
  rl.close();
  await lock.unlock();
  process.stdout.write('released\n');
  finish(0);
}

async function loop() {
  for (let i = 0; i < Number(rounds); i++) {
    const lock = await take();
    if (!lock) return;
    fs.appendFileSync(log, `enter ${who} -\n`);
    await new Promise((resolve) => setTimeout(resolve, 20));
    fs.appendFileSync(log, `exit ${who}\n`);
    await lock.unlock();
  }
  finish(0);
}

(mode === 'hold' ? hold() : loop()).catch((e) => {
  process.stderr.write(`redlock-peer: ${e.stack || e}\n`);
  finish(3);
});

/**
 * Graphile Worker's side of the drain scenario: store N no-op jobs, then drain
 * them with one `run()` in this Node process, and print one JSON line of counts
 * and times for the Python target (benchmarks/targets/graphile.py) to check.
 *
 *     echo '{"modules": DIR, "connectionString": URL, "jobs": N, ...}' | node graphile_drain.mjs
 *     node graphile_drain.mjs --check DIR    # prints the installed version
 *
 * The spec comes on stdin, so that a password in the connection string never
 * shows in a process list. DIR is the npm prefix graphile-worker was
 * installed into (a cache folder outside the repository): the module is
 * loaded from there, not from a node_modules next to this file.
 *
 * The phases: runMigrations(); addJobs() in batches (timed, reported apart,
 * not part of the drain); VACUUM ANALYZE of the jobs table, as every other
 * target's backlog gets; then run() with the settings of the spec and a task
 * that records which job ran. Once every job has run, runner.stop() shuts the
 * pool down gracefully, which also writes the last batch of completions: the
 * drain is timed from the first task start to the moment stop() returns, as
 * the Python workers are timed to the moment they return.
 */

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";

async function load(modules) {
  // Resolved from the install folder: `import "graphile-worker"` would look
  // for a node_modules beside this script, inside the repository.
  const require = createRequire(`${modules}/`);
  const entry = require.resolve("graphile-worker");
  // Its package.json is not among its exports: read it as a file.
  const pkg = JSON.parse(
    readFileSync(join(modules, "node_modules", "graphile-worker", "package.json"), "utf8"),
  );
  return { gw: await import(pathToFileURL(entry).href), version: pkg.version };
}

// Epoch seconds with sub-millisecond resolution, comparable with Python's time.time().
const clock = () => (performance.timeOrigin + performance.now()) / 1000;

async function drain(spec) {
  const { gw, version } = await load(spec.modules);
  const n = spec.jobs;
  // The no-op logger: nothing formatted or written per job.
  const logger = new gw.Logger(() => () => {});
  const base = { connectionString: spec.connectionString, schema: spec.schema, logger };

  let t0 = clock();
  await gw.runMigrations(base);
  const migrateSeconds = clock() - t0;

  const utils = await gw.makeWorkerUtils(base);
  let addSeconds;
  t0 = clock();
  try {
    for (let first = 0; first < n; first += spec.addBatch) {
      const specs = [];
      for (let seq = first; seq < Math.min(n, first + spec.addBatch); seq++) {
        specs.push({ identifier: "noop", payload: { seq } });
      }
      const added = await utils.addJobs(specs);
      if (added.length !== specs.length) {
        throw new Error(`addJobs stored ${added.length} of ${specs.length} jobs`);
      }
    }
    addSeconds = clock() - t0;
    await utils.withPgClient((client) =>
      client.query(`VACUUM ANALYZE ${spec.schema}._private_jobs`),
    );
  } finally {
    await utils.release();
  }

  // Which seq ran, and how often: a job run twice or one that is not ours
  // fails the run on the Python side, as does one that never ran.
  const seen = new Uint8Array(n);
  let ran = 0;
  let distinct = 0;
  let duplicates = 0;
  let foreign = 0;
  let firstStart = null;
  let lastStart = null;
  let allRan;
  const done = new Promise((resolve) => {
    allRan = resolve;
  });
  if (n === 0) allRan();

  const taskList = {
    noop: async (payload) => {
      const now = clock();
      if (firstStart === null) firstStart = now;
      lastStart = now;
      ran++;
      const seq = payload?.seq;
      if (!Number.isInteger(seq) || seq < 0 || seq >= n) {
        foreign++;
      } else if (seen[seq]) {
        duplicates++;
      } else {
        seen[seq] = 1;
        if (++distinct === n) allRan();
      }
    },
  };

  const started = clock();
  const runner = await gw.run({
    ...base,
    taskList,
    noHandleSignals: true,
    // No cron items, rather than whatever crontab file the cwd may hold.
    parsedCronItems: [],
    preset: {
      worker: {
        concurrentJobs: spec.concurrentJobs,
        maxPoolSize: spec.maxPoolSize,
        localQueue: { size: spec.localQueueSize },
        completeJobBatchDelay: spec.completeJobBatchDelay,
      },
    },
  });
  let timer;
  const timedOut = await Promise.race([
    done.then(() => false),
    new Promise((resolve) => {
      timer = setTimeout(() => resolve(true), spec.timeoutSeconds * 1000);
    }),
    // A runner that dies (a lost connection) must not leave us waiting.
    runner.promise.then(() => false),
  ]);
  clearTimeout(timer);
  await runner.stop();
  const ended = clock();

  return {
    version,
    node: process.version,
    jobs: n,
    ran,
    distinct,
    duplicates,
    foreign,
    timed_out: timedOut,
    migrate_seconds: migrateSeconds,
    add_seconds: addSeconds,
    started,
    first_start: firstStart,
    last_start: lastStart,
    ended,
    drain_seconds: firstStart === null ? null : ended - firstStart,
  };
}

async function main(argv) {
  if (argv[0] === "--check") {
    const { version } = await load(argv[1]);
    process.stdout.write(`${JSON.stringify({ version, node: process.version })}\n`);
    return;
  }
  const result = await drain(JSON.parse(readFileSync(0, "utf8")));
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main(process.argv.slice(2)).then(
  // Exit at once: a pool or timer left over must not keep the process up.
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${error?.stack ?? error}\n`);
    process.exit(1);
  },
);

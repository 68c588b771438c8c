/**
 * The codec pool's threads on Node: `worker_threads` adapted to the Web
 * Worker shape the pool uses (lib/codec/pool.ts, CodecThread). A codec
 * thread runs the same file as the program (the npm package's bundle); its
 * entry asks {@linkcode runsCodecJobs} first and, in a codec thread,
 * serves jobs instead of starting.
 *
 * @module
 */

import { availableParallelism } from "node:os";
import process from "node:process";
import {
  isMainThread,
  parentPort,
  Worker,
  workerData,
} from "node:worker_threads";
import {
  CODEC_WORKER_NAME,
  type CodecThread,
  type CodecThreadScope,
  installCodecThreads,
  type PoolRequest,
  serveCodecThread,
} from "../codec/pool.ts";

/** Starts one codec thread running `script`. */
function start(script: string, name: string): CodecThread {
  // No Node flags of the program's own (`--input-type` and the like would
  // be refused for a file).
  const worker = new Worker(new URL(script), {
    workerData: { name },
    execArgv: [],
  });
  let stopped = false;
  const thread: CodecThread = {
    onmessage: null,
    onerror: null,
    postMessage: (message: PoolRequest, transfer: Transferable[]) =>
      worker.postMessage(message, transfer as ArrayBuffer[]),
    terminate: () => {
      stopped = true;
      void worker.terminate();
    },
  };
  const fail = (message: string) =>
    thread.onerror?.({ message, preventDefault() {} });
  worker.on("message", (data) => thread.onmessage?.({ data }));
  worker.on("error", (err) => fail(err.message));
  // A thread that ends unasked (out of memory, process.exit in a codec)
  // fails the pool's jobs rather than leaving them waiting.
  worker.on("exit", (code) => {
    if (!stopped) fail(`the thread exited with code ${code}`);
  });
  // Like a Web Worker in Deno, a thread keeps the process alive until the
  // pool closes it.
  return thread;
}

/** A worker thread's messaging in a Web Worker scope's shape. */
function threadScope(name: string): CodecThreadScope {
  const port = parentPort!;
  let handler: CodecThreadScope["onmessage"] = null;
  port.on("message", (data: PoolRequest) => handler?.({ data }));
  return {
    name,
    get onmessage() {
      return handler;
    },
    set onmessage(next) {
      handler = next;
    },
    postMessage: (message, transfer) =>
      port.postMessage(message, transfer as ArrayBuffer[] | undefined),
    addEventListener(type, listener) {
      const event = type === "error"
        ? "uncaughtException"
        : "unhandledRejection";
      process.on(
        event,
        (error: unknown) =>
          listener(Object.assign(new Event(type), { error, reason: error })),
      );
    },
    close: () => port.close(),
  };
}

/**
 * Makes the codec pool use `worker_threads` in this process; in a thread
 * that a pool started, serves the pool's jobs instead.
 *
 * @returns Whether this thread is a codec thread (whose entry then does
 * nothing else).
 * @throws Never.
 *
 * @example An entry point of the npm package
 * ```ts
 * import { runsCodecJobs } from "./threads.ts";
 * // In a codec thread this file only serves jobs; elsewhere it runs.
 * if (!runsCodecJobs()) console.log("the program runs; its pools use worker_threads");
 * ```
 */
export function runsCodecJobs(): boolean {
  const name = (workerData as { name?: unknown } | null)?.name;
  if (!isMainThread && name === CODEC_WORKER_NAME) {
    serveCodecThread(threadScope(name));
    return true;
  }
  installCodecThreads({ start, cores: availableParallelism() });
  return false;
}

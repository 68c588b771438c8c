// The worker side of CodecPool. A codec worker runs the module that defines
// the pool (pool.ts in source form, or the one-file bundle the pool was
// built into): when that module is evaluated in a worker the pool started,
// it serves jobs instead. So there is no second entry file to locate, and a
// bundle is its own worker script. Messages are described in pool.ts
// (PoolRequest / PoolResponse).

import type { PoolRequest, PoolResponse } from "./pool.ts";
import { codecCache, runJob } from "./_job.ts";

/** The `name` a codec worker is started with; it is how it knows its job. */
export const CODEC_WORKER_NAME = "qcow2pipe-codec";

/**
 * The parts of a dedicated worker's global scope used here, which a
 * runtime without Web Workers provides for its own threads.
 */
export interface CodecThreadScope {
  /** The name the thread was started with. */
  name: string;
  /** Receives jobs. */
  onmessage: ((event: { data: PoolRequest }) => unknown) | null;
  /** Sends an answer, its buffers transferred. */
  postMessage(message: PoolResponse, transfer?: Transferable[]): void;
  /** Hears errors that no job caught. */
  addEventListener(
    type: "error" | "unhandledrejection",
    listener: (
      event: Event & { error?: unknown; message?: string; reason?: unknown },
    ) => void,
  ): void;
  /** Stops the thread. */
  close(): void;
}

/** Whether this thread is a worker a CodecPool started. */
export function inCodecWorker(): boolean {
  const g = globalThis as { WorkerGlobalScope?: unknown; name?: unknown };
  return typeof g.WorkerGlobalScope === "function" &&
    g.name === CODEC_WORKER_NAME;
}

/** Answers the pool's jobs on this worker thread (its global scope by default). */
export function serveCodecJobs(
  scope: CodecThreadScope = globalThis as unknown as CodecThreadScope,
): void {
  const codecFor = codecCache();
  scope.onmessage = async (event) => {
    const req = event.data;
    let res: PoolResponse;
    try {
      const codec = await codecFor(req.codec);
      const { data, lengths, offsets } = runJob(codec, req);
      // Every buffer goes back: the pool uses them again.
      const input = req.data.buffer === data.buffer ? undefined : req.data;
      res = { id: req.id, data, lengths, offsets, input };
      const transfer = [data.buffer as ArrayBuffer];
      if (input) transfer.push(input.buffer as ArrayBuffer);
      scope.postMessage(res, transfer);
    } catch (err) {
      const e = err as {
        message?: string;
        code?: string;
        name?: string;
        index?: number;
      };
      res = {
        id: req.id,
        error: {
          message: String(e?.message ?? err),
          code: e?.code,
          name: e?.name,
          index: e?.index,
        },
      };
      scope.postMessage(res);
    }
  };

  // An error that no job caught (a bug, a failed allocation) would otherwise
  // print a stack trace from inside the worker: report it to the pool in
  // one message instead, which fails the pool's jobs with it, and stop.
  const fatal = (event: Event, reason: unknown) => {
    event.preventDefault();
    const message = reason instanceof Error ? reason.message : String(reason);
    scope.postMessage({ fatal: message });
    scope.close();
  };
  scope.addEventListener("error", (e) => fatal(e, e.error ?? e.message));
  scope.addEventListener("unhandledrejection", (e) => fatal(e, e.reason));
}

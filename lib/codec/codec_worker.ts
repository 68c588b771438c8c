// Worker side of CodecPool: compresses or decompresses batches of clusters.
// Messages are described in pool.ts (PoolRequest / PoolResponse).
/// <reference lib="deno.worker" />

import type { PoolRequest, PoolResponse } from "./pool.ts";
import { codecCache, runJob } from "./_job.ts";

const codecFor = codecCache();

self.onmessage = async (event: MessageEvent<PoolRequest>) => {
  const req = event.data;
  let res: PoolResponse;
  try {
    const codec = await codecFor(req.codec);
    const { data, lengths } = runJob(codec, req);
    res = { id: req.id, data, lengths };
    self.postMessage(res, [data.buffer as ArrayBuffer]);
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
    self.postMessage(res);
  }
};

// An error that no job caught (a bug, a failed allocation) would otherwise
// print a stack trace from inside the worker: report it to the pool in one
// message instead, which fails the pool's jobs with it, and stop.
function fatal(event: Event, reason: unknown): void {
  event.preventDefault();
  const message = reason instanceof Error ? reason.message : String(reason);
  const res: PoolResponse = { fatal: message };
  self.postMessage(res);
  self.close();
}
self.addEventListener("error", (e) => fatal(e, e.error ?? e.message));
self.addEventListener("unhandledrejection", (e) => fatal(e, e.reason));

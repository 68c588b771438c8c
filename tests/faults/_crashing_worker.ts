// A codec worker that crashes (not a test file): it runs the real worker for
// its first job, then throws an uncaught error from its message handler, the
// way a bug or a failed allocation inside a worker would surface. Loaded in
// place of lib/codec/codec_worker.ts by worker_crash_test.ts.
/// <reference lib="deno.worker" />

import "../../lib/codec/codec_worker.ts";

const real = self.onmessage as (event: MessageEvent) => unknown;
let jobs = 0;
self.onmessage = (event: MessageEvent) => {
  if (++jobs > 1) throw new Error("injected fault in a codec worker");
  return real(event);
};

// A codec worker that crashes (not a test file): it runs the real worker for
// its first job, then throws an uncaught error from its message handler, the
// way a bug or a failed allocation inside a worker would surface. Loaded in
// place of the pool's own module by worker_crash_test.ts (keeping the
// worker's name, so pool.ts serves jobs here as it does in a real worker).
/// <reference lib="deno.worker" />

import "../../lib/codec/pool.ts";

const real = self.onmessage as (event: MessageEvent) => unknown;
let jobs = 0;
self.onmessage = (event: MessageEvent) => {
  if (++jobs > 1) throw new Error("injected fault in a codec worker");
  return real(event);
};

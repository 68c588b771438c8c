/**
 * A pool of Web Workers that compress and decompress clusters in parallel,
 * or runs the jobs inline where the runtime has no `Worker` (Node 20) and
 * no host module installed another kind of thread
 * ({@linkcode installCodecThreads}: the npm package's `worker_threads`).
 *
 * @module
 */

import {
  InternalError,
  IoError,
  type IoErrorCode,
  Qcow2Error,
  type Qcow2ErrorCode,
} from "../format/errors.ts";
import type { CodecOptions } from "./codecs.ts";
import { codecCache, runJob } from "./_job.ts";
import { BufferPool } from "../bytes/recycle.ts";
import {
  CODEC_WORKER_NAME,
  type CodecThreadScope,
  inCodecWorker,
  serveCodecJobs,
} from "./_worker_side.ts";

export { CODEC_WORKER_NAME, type CodecThreadScope };

// In a worker the pool started, this module (or the bundle it is part of)
// serves jobs; see _worker_side.ts.
if (inCodecWorker()) serveCodecJobs();

/** A message to a codec worker. */
export interface PoolRequest {
  /** Job id, echoed in the response. */
  id: number;
  /** What to do. */
  op: "compress" | "decompress";
  /** The codec; an absent level means the backend's default. */
  codec: CodecOptions;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Input bytes (transferred). */
  data: Uint8Array;
  /** decompress: payload lengths. */
  lengths: number[];
  /** decompress: where each payload starts in `data`, when not back to back. */
  starts?: number[];
  /** decompress: where the clusters go (transferred). */
  out?: Uint8Array;
}

/** A codec worker's answer. */
export type PoolResponse =
  | {
    id: number;
    /** The result, in the memory of the request's `data` (compress) or `out`. */
    data: Uint8Array;
    lengths: number[];
    offsets: number[];
    /** decompress: the request's `data`, given back to be used again. */
    input?: Uint8Array;
  }
  | {
    id: number;
    error: { message: string; code?: string; name?: string; index?: number };
  }
  /** An error no job caught: the worker is lost. */
  | { fatal: string };

/**
 * The part of a Web Worker the pool uses: what a runtime whose threads are
 * not Web Workers (Node's `worker_threads`) adapts its own to.
 */
export interface CodecThread {
  /** Sends a job, its buffers transferred. */
  postMessage(message: PoolRequest, transfer: Transferable[]): void;
  /** Receives answers. */
  onmessage: ((event: { data: PoolResponse }) => void) | null;
  /** Receives an error that escaped the thread's code. */
  onerror:
    | ((event: { message: string; preventDefault(): void }) => void)
    | null;
  /** Stops the thread. */
  terminate(): void;
}

/**
 * How a runtime without Web Workers starts a codec thread (see
 * {@linkcode installCodecThreads}).
 */
export interface CodecThreads {
  /**
   * Starts a thread running `script` (the module that defines the pool:
   * this file, or the bundle it was built into), which must serve jobs
   * through {@linkcode serveCodecThread} when it sees `name`.
   */
  start(script: string, name: string): CodecThread;
  /** The pool's default size: the number of cores. */
  cores: number;
}

let threads: CodecThreads | undefined;

/**
 * Installs how codec threads start where the runtime's threads are not Web
 * Workers (called once by the runtime's host module, as the npm package's
 * Node entry does with `worker_threads`); pools started afterwards use
 * them rather than `Worker`. `undefined` uninstalls them.
 *
 * @param start The runtime's threads.
 * @throws Never.
 *
 * @example A pool on "threads" that answer on the calling thread
 * ```ts
 * import assert from "node:assert";
 * import {
 *   type CodecThread, type CodecThreadScope, CodecPool, installCodecThreads, serveCodecThread,
 * } from "./pool.ts";
 * function loopback(_script: string, name: string): CodecThread {
 *   const scope = {
 *     name, onmessage: null, addEventListener() {}, close() {},
 *     postMessage: (data) => thread.onmessage?.({ data }),
 *   } as CodecThreadScope;
 *   serveCodecThread(scope);
 *   const thread: CodecThread = {
 *     onmessage: null, onerror: null, terminate() {},
 *     postMessage: (data) => scope.onmessage!({ data }),
 *   };
 *   return thread;
 * }
 * installCodecThreads({ cores: 1, start: loopback });
 * try {
 *   await using pool = new CodecPool({ workers: 1 });
 *   const { lengths } = await pool.compress({ type: "zlib" }, new Uint8Array(4096).fill(1), 4096);
 *   assert.ok(lengths[0] > 0 && lengths[0] < 4096);
 * } finally {
 *   installCodecThreads(undefined);
 * }
 * ```
 */
export function installCodecThreads(start: CodecThreads | undefined): void {
  threads = start;
}

/**
 * Serves a pool's jobs on this thread, for a runtime whose threads are not
 * Web Workers: its host module calls it in a thread that
 * {@linkcode CodecThreads.start} started.
 *
 * @param scope The thread's messaging, in a Web Worker's shape.
 * @throws Never.
 *
 * @example Answer one job through a scope
 * ```ts
 * import assert from "node:assert";
 * import { type CodecThreadScope, type PoolResponse, serveCodecThread } from "./pool.ts";
 * let handler: CodecThreadScope["onmessage"] = null;
 * const answers: PoolResponse[] = [];
 * serveCodecThread({
 *   name: "qcow2pipe-codec",
 *   set onmessage(h) { handler = h; },
 *   get onmessage() { return handler; },
 *   postMessage: (m) => answers.push(m),
 *   addEventListener: () => {},
 *   close: () => {},
 * });
 * const data = new Uint8Array(4096).fill(7);
 * await handler!({ data: { id: 1, op: "compress", codec: { type: "zlib" }, clusterSize: 4096, data, lengths: [] } });
 * assert.ok("lengths" in answers[0] && answers[0].lengths[0] > 0);
 * ```
 */
export function serveCodecThread(scope: CodecThreadScope): void {
  serveCodecJobs(scope);
}

/**
 * Options of a {@linkcode CodecPool}.
 *
 * @example Run the codecs on the calling thread
 * ```ts
 * import assert from "node:assert";
 * import { CodecPool } from "./pool.ts";
 * await using pool = new CodecPool({ workers: 0 });
 * const { lengths } = await pool.compress({ type: "zlib" }, new Uint8Array(4096).fill(1), 4096);
 * assert.ok(lengths[0] > 0 && lengths[0] < 4096);
 * ```
 */
export interface CodecPoolOptions {
  /**
   * Number of workers; 0 runs jobs on the calling thread, as does any
   * count where the runtime has no `Worker` (Node 20) and no
   * {@linkcode installCodecThreads}.
   * @default {navigator.hardwareConcurrency} (the installed threads'
   * `cores`, else 1)
   */
  workers?: number;
}

/**
 * Compressed clusters returned by {@linkcode CodecPool.compress}.
 *
 * @example Random bytes do not compress
 * ```ts
 * import assert from "node:assert";
 * import { CodecPool } from "./pool.ts";
 * await using pool = new CodecPool({ workers: 0 });
 * const clusters = new Uint8Array(2 * 4096);
 * crypto.getRandomValues(clusters.subarray(4096));
 * const result = await pool.compress({ type: "zstd" }, clusters, 4096);
 * assert.strictEqual(result.lengths[1], 0); // stored as it is
 * assert.strictEqual(result.offsets[1], 512); // after the first payload, padded
 * const stored = result.data.subarray(result.offsets[1], result.offsets[1] + 4096);
 * assert.deepStrictEqual(stored, clusters.subarray(4096));
 * ```
 */
export interface CompressResult {
  /**
   * Each cluster's bytes: its payload, zero-padded to the next 512-byte
   * boundary (where the packer places payloads), or the cluster itself
   * when it did not compress.
   */
  data: Uint8Array;
  /** Payload length per cluster; 0 when the cluster did not compress. */
  lengths: number[];
  /** Where each cluster's bytes start in `data`. */
  offsets: number[];
}

interface Pending {
  resolve: (r: CompressResult) => void;
  reject: (e: unknown) => void;
  worker: number;
}

/**
 * Runs cluster compression and decompression on N Web Workers (inline on
 * the calling thread where the runtime has no `Worker`). Each call is one
 * job; callers keep their own order (await jobs in the order they were
 * submitted) and bound how many they have in flight. Close it with
 * `await using` or {@linkcode CodecPool.close}: workers keep the process
 * alive until then.
 *
 * @example Compress and decompress on two workers
 * ```ts
 * import assert from "node:assert";
 * import { CodecPool } from "./pool.ts";
 * await using pool = new CodecPool({ workers: 2 });
 * const clusters = new Uint8Array(2 * 4096).fill(1);
 * const packed = await pool.compress({ type: "zstd" }, clusters, 4096);
 * const payloads = packed.offsets.map((at, i) => packed.data.subarray(at, at + packed.lengths[i]));
 * assert.deepStrictEqual(await pool.decompress({ type: "zstd" }, payloads, 4096), clusters);
 * ```
 */
export class CodecPool implements AsyncDisposable {
  #workers: CodecThread[] = [];
  #load: number[] = [];
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #closed = false;
  #failure: Error | undefined;
  #inline = codecCache();
  #count: number;
  /** Buffers that carried payloads to a worker and came back. */
  #carriers = new BufferPool();

  /**
   * Creates the pool; its workers start with the first job.
   *
   * @param options Worker count.
   * @throws {RangeError} When `workers` is not a non-negative integer.
   */
  constructor(options: CodecPoolOptions = {}) {
    const count = options.workers ??
      (globalThis.navigator?.hardwareConcurrency || threads?.cores || 1);
    if (!Number.isInteger(count) || count < 0 || count > 1024) {
      throw new RangeError(
        `Cannot create codec pool: workers ${count} is out of range [0, 1024]`,
      );
    }
    this.#count = typeof globalThis.Worker === "function" || threads
      ? count
      : 0;
  }

  /** Starts the workers on first use, so a pool that is never needed costs nothing. */
  #start(): void {
    if (this.#workers.length > 0) return;
    for (let i = 0; i < this.#count; i++) {
      // This module is the worker's script: see _worker_side.ts.
      // (A Web Worker is a CodecThread whose events carry more fields.)
      const worker = threads
        ? threads.start(import.meta.url, CODEC_WORKER_NAME)
        : new Worker(import.meta.url, {
          type: "module",
          name: CODEC_WORKER_NAME,
        }) as unknown as CodecThread;
      worker.onmessage = (event) => {
        const res = event.data;
        if ("fatal" in res) {
          this.#fail(
            new InternalError(
              `Cannot run codec jobs: codec worker ${i} failed: ${res.fatal}`,
            ),
          );
        } else this.#settle(res);
      };
      worker.onerror = (event) => {
        event.preventDefault();
        this.#fail(
          new InternalError(
            `Cannot run codec jobs: codec worker ${i} failed: ${event.message}`,
          ),
        );
      };
      this.#workers.push(worker);
      this.#load.push(0);
    }
  }

  /**
   * Number of workers (0 when jobs run inline, as they do wherever the
   * runtime has no `Worker`); they start on the first job.
   */
  get size(): number {
    return this.#count;
  }

  /**
   * Compresses whole clusters.
   *
   * @param codec Codec type, level and backend.
   * @param clusters `n * clusterSize` bytes. Not modified, unless they
   * are `job` itself.
   * @param clusterSize Cluster size in bytes.
   * @param job A buffer of at least `clusters.length` bytes to carry the
   * job (a copy of the clusters is made in it when they are not there
   * already). Its whole `ArrayBuffer` is handed to the worker, and the
   * result comes back in its memory, so the caller can use it again
   * once done with the result. Allocated when absent.
   * @returns The payloads, their lengths and where each starts.
   * @throws {TypeError} When the pool is closed.
   * @throws {InternalError} When a worker failed.
   */
  compress(
    codec: CodecOptions,
    clusters: Uint8Array,
    clusterSize: number,
    job?: Uint8Array,
  ): Promise<CompressResult> {
    let data: Uint8Array;
    if (job === undefined) {
      data = clusters.slice();
    } else if (job.length < clusters.length) {
      throw new RangeError(
        `Cannot compress clusters: the job buffer holds ${job.length} bytes, not ${clusters.length}`,
      );
    } else {
      data = job.subarray(0, clusters.length);
      if (
        clusters.buffer !== job.buffer || clusters.byteOffset !== job.byteOffset
      ) {
        data.set(clusters);
      }
    }
    return this.#submit({
      op: "compress",
      codec: plainOptions(codec),
      clusterSize,
      data,
      lengths: [],
    });
  }

  /**
   * Decompresses clusters, each exactly as QEMU would.
   *
   * @param codec Codec type (level is ignored) and backend.
   * @param payloads One compressed payload per cluster (may carry trailing
   * bytes of the last sector).
   * @param clusterSize Cluster size in bytes.
   * @param out Where the clusters go, at least `payloads.length *
   * clusterSize` bytes. Its whole `ArrayBuffer` is handed to the worker;
   * the result comes back in its memory. Allocated when absent.
   * @returns The clusters back to back.
   * @throws {Qcow2Error} `DECOMPRESS` naming the reason; its `index` says
   * which payload failed.
   * @throws {TypeError} When the pool is closed.
   * @throws {InternalError} When a worker failed.
   */
  decompress(
    codec: CodecOptions,
    payloads: Uint8Array[],
    clusterSize: number,
    out?: Uint8Array,
  ): Promise<Uint8Array> {
    const total = payloads.reduce((n, p) => n + p.length, 0);
    const data = this.carrier(total);
    const ranges = [];
    let at = 0;
    for (const p of payloads) {
      data.set(p, at);
      ranges.push({ offset: at, length: p.length });
      at += p.length;
    }
    return this.decompressIn(codec, data, ranges, clusterSize, out);
  }

  /**
   * A buffer to read payloads into and hand to
   * {@linkcode CodecPool.decompressIn}: one a job carried before, when
   * there is one, so that payloads are read where the worker gets them,
   * without a copy.
   *
   * @param length Bytes wanted.
   * @returns `length` bytes (of a buffer that may be larger).
   */
  carrier(length: number): Uint8Array {
    return this.#carriers.take(length).subarray(0, length);
  }

  /**
   * Decompresses clusters whose payloads lie in one buffer, as
   * {@linkcode CodecPool.decompress} does, without copying them: `data`'s
   * whole `ArrayBuffer` goes to the worker (detached here), and comes back
   * to the pool's carriers (see {@linkcode CodecPool.carrier}).
   *
   * @param codec Codec type (level is ignored) and backend.
   * @param data The payloads.
   * @param ranges Where each payload starts in `data`, and its length.
   * @param clusterSize Cluster size in bytes.
   * @param out Where the clusters go, as in `decompress`.
   * @returns The clusters back to back.
   * @throws {Qcow2Error} `DECOMPRESS` naming the reason; its `index` says
   * which payload failed.
   * @throws {RangeError} When a range lies outside `data`, or `out` is
   * too small.
   * @throws {TypeError} When the pool is closed.
   * @throws {InternalError} When a worker failed.
   *
   * @example Payloads read into a carrier
   * ```ts
   * import assert from "node:assert";
   * import { CodecPool } from "./pool.ts";
   * await using pool = new CodecPool({ workers: 1 });
   * const clusters = new Uint8Array(2 * 4096).fill(7);
   * const packed = await pool.compress({ type: "zstd" }, clusters, 4096);
   * const data = pool.carrier(packed.data.length);
   * data.set(packed.data);
   * const ranges = packed.offsets.map((offset, i) => ({ offset, length: packed.lengths[i] }));
   * assert.deepStrictEqual(await pool.decompressIn({ type: "zstd" }, data, ranges, 4096), clusters);
   * ```
   */
  decompressIn(
    codec: CodecOptions,
    data: Uint8Array,
    ranges: { offset: number; length: number }[],
    clusterSize: number,
    out?: Uint8Array,
  ): Promise<Uint8Array> {
    const need = ranges.length * clusterSize;
    if (out !== undefined && out.length < need) {
      throw new RangeError(
        `Cannot decompress clusters: the output holds ${out.length} bytes, not ${need}`,
      );
    }
    for (const r of ranges) {
      if (r.offset < 0 || r.length < 0 || r.offset + r.length > data.length) {
        throw new RangeError(
          `Cannot decompress clusters: a payload of ${r.length} bytes at ${r.offset} lies outside the ${data.length} bytes given`,
        );
      }
    }
    return this.#submit({
      op: "decompress",
      codec: plainOptions(codec),
      clusterSize,
      data,
      lengths: ranges.map((r) => r.length),
      starts: ranges.map((r) => r.offset),
      out: out?.subarray(0, need),
    }).then((r) => r.data);
  }

  /**
   * Gives back a buffer taken with {@linkcode CodecPool.carrier} that no
   * job carried, or one a job's clusters came back in, once done with:
   * the next {@linkcode CodecPool.carrier} may hand it out again. A reader
   * that takes its other buffers here too (the clusters' and the data's,
   * as the read-ahead queue does) holds one pool's buffers, not one per
   * kind: what one kind gave back another takes.
   *
   * @param buffer A view from the start of the buffer; no view of it may
   * be read after this.
   *
   * @example A buffer goes round
   * ```ts
   * import assert from "node:assert";
   * import { CodecPool } from "./pool.ts";
   * await using pool = new CodecPool({ workers: 0 });
   * const a = pool.carrier(100_000);
   * pool.giveBack(a);
   * assert.strictEqual(pool.carrier(70_000).buffer, a.buffer);
   * ```
   */
  giveBack(buffer: Uint8Array): void {
    this.#keep(buffer);
  }

  /** Keeps a carrier that came back, for the next job. */
  #keep(carrier: Uint8Array): void {
    this.#carriers.put(new Uint8Array(carrier.buffer as ArrayBuffer));
  }

  #submit(job: Omit<PoolRequest, "id">): Promise<CompressResult> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#closed) {
      return Promise.reject(
        new TypeError("Cannot run codec job: the pool is closed"),
      );
    }
    if (this.#count === 0) return this.#runInline(job);
    this.#start();
    let worker = 0;
    for (let i = 1; i < this.#load.length; i++) {
      if (this.#load[i] < this.#load[worker]) worker = i;
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, worker });
      this.#load[worker]++;
      const req: PoolRequest = { id, ...job };
      const transfer = [job.data.buffer as ArrayBuffer];
      if (job.out) transfer.push(job.out.buffer as ArrayBuffer);
      this.#workers[worker].postMessage(req, transfer);
    });
  }

  async #runInline(job: Omit<PoolRequest, "id">): Promise<CompressResult> {
    const result = runJob(await this.#inline(job.codec), job);
    if (job.op === "decompress") this.#keep(job.data);
    return result;
  }

  #settle(res: Exclude<PoolResponse, { fatal: string }>): void {
    const pending = this.#pending.get(res.id);
    if (!pending) return;
    this.#pending.delete(res.id);
    this.#load[pending.worker]--;
    if ("error" in res) {
      const { message, code, name, index } = res.error;
      const err = workerError(name, code, message);
      if (index !== undefined) Object.assign(err, { index });
      pending.reject(err);
    } else {
      if (res.input) this.#keep(res.input);
      pending.resolve({
        data: res.data,
        lengths: res.lengths,
        offsets: res.offsets,
      });
    }
  }

  #fail(err: InternalError): void {
    this.#failure ??= err;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    this.#terminate();
  }

  #terminate(): void {
    for (const w of this.#workers) w.terminate();
    this.#load = this.#load.map(() => 0);
  }

  /**
   * Stops the workers. Jobs still running are rejected.
   *
   * @returns A promise that resolves when the workers are stopped.
   */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      const err = new TypeError("Cannot run codec job: the pool was closed");
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
      this.#terminate();
    }
    return Promise.resolve();
  }

  /** Same as {@linkcode CodecPool.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function plainOptions(codec: CodecOptions): CodecOptions {
  // A copy: the caller's object may change later or not be cloneable.
  return {
    type: codec.type,
    level: codec.level,
    backend: codec.backend,
    zlibWindow: codec.zlibWindow,
  };
}

/**
 * A job's error, sent by a worker as its name, code and message, made again
 * of the class it had there; any other error from a codec is a bug.
 */
function workerError(
  name: string | undefined,
  code: string | undefined,
  message: string,
): Error {
  if (name === "Qcow2Error" && code) {
    return new Qcow2Error(code as Qcow2ErrorCode, message);
  }
  if (name === "IoError" && code) {
    return new IoError(code as IoErrorCode, message);
  }
  if (name === "RangeError") return new RangeError(message);
  if (name === "TypeError") return new TypeError(message);
  return new InternalError(message);
}

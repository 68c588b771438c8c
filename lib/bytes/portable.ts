// What the runtime-neutral core uses in place of the newer built-ins that
// some of its runtimes lack: `ReadableStream.from` (no Chromium has it) and
// `Promise.withResolvers` (Node 20 has none). tests/architecture_test.ts
// keeps those built-ins, and the others on its list, out of everything the
// bundle reaches.

/**
 * A readable stream of what an iterable yields, pulled one value at a
 * time (what `ReadableStream.from` does where it exists): cancelling the
 * stream returns the iterator, so a generator's `finally` runs.
 *
 * @param source A sync or async iterable (a generator, an array).
 * @returns The stream, with no queue ahead of the reader.
 *
 * @example A generator as a stream, stopped by its reader
 * ```ts
 * import assert from "node:assert";
 * import { streamFrom } from "./portable.ts";
 * let stopped = false;
 * async function* count() {
 *   try {
 *     for (let i = 0;; i++) yield i;
 *   } finally {
 *     stopped = true;
 *   }
 * }
 * const reader = streamFrom(count()).getReader();
 * assert.deepStrictEqual(await reader.read(), { value: 0, done: false });
 * await reader.cancel();
 * assert.ok(stopped);
 * ```
 */
export function streamFrom<T>(
  source: Iterable<T> | AsyncIterable<T>,
): ReadableStream<T> {
  let iterator: Iterator<T> | AsyncIterator<T> | undefined;
  return new ReadableStream<T>({
    start() {
      iterator = Symbol.asyncIterator in source
        ? source[Symbol.asyncIterator]()
        : source[Symbol.iterator]();
    },
    async pull(controller) {
      const next = await iterator!.next();
      if (next.done) controller.close();
      else controller.enqueue(await next.value);
    },
    async cancel(reason) {
      await iterator!.return?.(reason);
    },
  }, { highWaterMark: 0 });
}

/** A promise with its settle functions (`Promise.withResolvers`' result). */
export interface Deferred<T> {
  /** The promise. */
  promise: Promise<T>;
  /** Fulfils it. */
  resolve: (value: T | PromiseLike<T>) => void;
  /** Rejects it. */
  reject: (reason?: unknown) => void;
}

/**
 * A promise settled from outside (what `Promise.withResolvers` returns
 * where it exists).
 *
 * @returns The promise and its resolve and reject functions.
 *
 * @example Settle a promise from a callback
 * ```ts
 * import assert from "node:assert";
 * import { deferred } from "./portable.ts";
 * const ready = deferred<string>();
 * setTimeout(() => ready.resolve("done"), 0);
 * assert.strictEqual(await ready.promise, "done");
 * ```
 */
export function deferred<T>(): Deferred<T> {
  let resolve!: Deferred<T>["resolve"];
  let reject!: Deferred<T>["reject"];
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * Raw bytes piped into a qcow2 file on disk.
 *
 * @module
 */

import { OutputFile, type OutputFileOptions } from "./host/output_file.ts";
import {
  convert,
  type ConvertOptions,
  type ConvertSummary,
} from "./convert.ts";
import type { ZeroBytes } from "./bytes/zeros.ts";

/**
 * A `WritableStream` of raw disk bytes that becomes a qcow2 file: pipe a
 * `fetch` body (or any byte stream) into it. The file appears under `path`
 * when the stream closes successfully; on abort or error nothing is left.
 *
 * @param path Where to write the qcow2 image.
 * @param options Writer options, and `noClobber` to keep an existing file
 * (by default it is replaced once the new one is complete).
 * @returns The writable side; `closed` resolves with the summary once the
 * file is in place.
 *
 * @example Pipe a download into a compressed qcow2 file
 * ```ts
 * import assert from "node:assert";
 * import { qcow2FileWritable } from "./file_writable.ts";
 * const dir = await Deno.makeTempDir();
 * await using server = Deno.serve({ port: 0, onListen() {} }, () => new Response(new Uint8Array(200_000).fill(1)));
 * const sink = qcow2FileWritable(`${dir}/disk.qcow2`, { compression: "zstd", workers: 1 });
 * await (await fetch(`http://localhost:${server.addr.port}/`)).body!.pipeTo(sink.writable);
 * assert.strictEqual((await sink.closed).virtualSize, 200_192);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function qcow2FileWritable(
  path: string,
  options: ConvertOptions & Pick<OutputFileOptions, "noClobber"> = {},
): {
  writable: WritableStream<Uint8Array | ZeroBytes>;
  closed: Promise<ConvertSummary>;
} {
  const { readable, writable } = new TransformStream<
    Uint8Array | ZeroBytes,
    Uint8Array | ZeroBytes
  >();
  const { noClobber } = options;
  const closed = OutputFile.create(path, { noClobber }).then((output) =>
    convert(readable, output, options)
  );
  closed.catch(() => {});
  // The writable side reports the conversion's failure to the producer too.
  const inner = writable.getWriter();
  const outer = new WritableStream<Uint8Array | ZeroBytes>({
    write: (chunk) => inner.write(chunk),
    close: async () => {
      await inner.close();
      await closed;
    },
    abort: (reason) => inner.abort(reason),
  }, { highWaterMark: 1 });
  return { writable: outer, closed };
}

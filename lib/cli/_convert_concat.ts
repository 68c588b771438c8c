// Several SRCs read one after the other as one disk, as `qemu-img convert
// SRC1 SRC2 … DST` concatenates them.
import type { GuestImage } from "../reader/image.ts";
import type { ZeroBytes } from "../bytes/zeros.ts";
import type { CodecPool } from "../codec/pool.ts";
import { imageChunks, type SalvageReport } from "../reader/segments.ts";
import { type Input, type InputOptions, openInput } from "./_convert_input.ts";

type Chunk = Uint8Array | ZeroBytes;

/**
 * Reads streams one after the other, each opened when the one before it
 * has ended.
 */
function concatenate(parts: (() => ReadableStream<Chunk>)[]) {
  let next = 0;
  let reader: ReadableStreamDefaultReader<Chunk> | undefined;
  return new ReadableStream<Chunk>({
    async pull(controller) {
      for (;;) {
        if (reader === undefined) {
          if (next === parts.length) {
            controller.close();
            return;
          }
          reader = parts[next++]().getReader();
        }
        const { done, value } = await reader.read();
        if (!done) {
          controller.enqueue(value);
          return;
        }
        reader = undefined;
      }
    },
    async cancel(reason) {
      await reader?.cancel(reason);
    },
  });
}

/**
 * Opens every SRC and reads them as one raw stream, their sizes added.
 *
 * @param sources The SRCs, in order.
 * @param options How to open each (as one SRC is opened).
 * @param pool The codec pool compressed clusters are inflated in.
 * @param salvage With --salvage: told of each range read as zeros.
 * @returns The stream, its total size, and the images opened.
 */
export async function openConcatenated(
  sources: string[],
  options: InputOptions,
  pool: CodecPool,
  salvage?: SalvageReport,
): Promise<
  { input: Input & { raw: ReadableStream<Chunk> }; images: GuestImage[] }
> {
  const inputs: Input[] = [];
  for (const src of sources) inputs.push(await openInput(src, options));
  const parts = inputs.map((input) => () =>
    "image" in input ? imageChunks(input.image, { pool, salvage }) : input.raw
  );
  const sizes = inputs.map((input) => input.total);
  const total = sizes.some((size) => size === undefined)
    ? undefined
    : sizes.reduce((a, b) => a! + b!, 0);
  const images = inputs.flatMap((input) =>
    "image" in input ? [input.image] : input.from ? [input.from] : []
  );
  return { input: { raw: concatenate(parts), total }, images };
}

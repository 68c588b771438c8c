// Values and operands shared by the commands (-f/-F formats, the operands
// expected), and buffered text on standard output. The options
// themselves are read by _getopt.ts.
import { isReadFormat, readFormatsText } from "../reader/formats.ts";
import { UsageError } from "./_util.ts";
import type { ImageFormat } from "../reader/open.ts";

/**
 * The value of `-f`/`-F` (an image's format, as in qemu-img): a format the
 * reader opens; absent means probe it.
 */
export function parseFormat(
  text: string | undefined,
  flag: string,
): ImageFormat | undefined {
  if (text === undefined) return undefined;
  if (!isReadFormat(text)) {
    throw new UsageError(
      `Cannot parse ${flag}: image format "${text}" is not ${
        readFormatsText("or")
      }`,
    );
  }
  return text;
}

/** Exactly the named positionals, or a UsageError naming what is expected. */
export function expectPositionals(
  action: string,
  positionals: string[],
  names: string[],
): string[] {
  if (positionals.length !== names.length) {
    throw new UsageError(
      `Cannot ${action}: expected ${
        names.join(" and ")
      }, got ${positionals.length} argument(s) (see --help)`,
    );
  }
  return positionals;
}

const encoder = new TextEncoder();

/** Writes text to standard output, all of it. */
export async function writeOut(text: string): Promise<void> {
  const bytes = encoder.encode(text);
  let done = 0;
  while (done < bytes.length) {
    done += await Deno.stdout.write(bytes.subarray(done));
  }
}

/** Collects text and writes it to standard output in large pieces. */
export class OutBuffer {
  #parts: string[] = [];
  #length = 0;

  /** Adds text, flushing once 64 KiB have gathered. */
  async add(text: string): Promise<void> {
    this.#parts.push(text);
    this.#length += text.length;
    if (this.#length >= 65536) await this.flush();
  }

  /** Writes what has gathered. */
  async flush(): Promise<void> {
    const text = this.#parts.join("");
    this.#parts = [];
    this.#length = 0;
    if (text) await writeOut(text);
  }
}

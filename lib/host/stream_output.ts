/**
 * Destinations that take their bytes in order: standard output, a FIFO, a
 * character device, or what a name in /dev or /proc leads to
 * (`/dev/stdout`, `/proc/self/fd/N`). Nothing is created, renamed or
 * replaced; the entry stays what it is.
 *
 * @module
 */

import { fstatSync } from "node:fs";
import { IoError } from "../format/errors.ts";
import { fileError, ioCode, ioReason } from "../io/os_errors.ts";
import { inspectDestination } from "./_destination.ts";
import {
  assertNotInput,
  identityOf,
  type StatIdentity,
} from "../io/identity.ts";
import type { FileIdentity } from "../io/source.ts";

/**
 * Options of {@linkcode openStreamOutput} and {@linkcode standardOutput}.
 *
 * @example Refuse a /proc/self/fd name of the file being read
 * ```ts
 * import assert from "node:assert";
 * import { FileSource } from "./file_source.ts";
 * import { openStreamOutput, type StreamOutputOptions } from "./stream_output.ts";
 * const path = await Deno.makeTempFile();
 * await using input = await FileSource.open(path);
 * const { dev, ino } = input.identity!;
 * const options: StreamOutputOptions = { inputs: [input.identity!] };
 * // The descriptor the source holds, found by what it is, not its name.
 * const fd = [...Deno.readDirSync("/proc/self/fd")].find((e) => {
 *   try {
 *     const st = Deno.statSync(`/proc/self/fd/${e.name}`);
 *     return st.dev === dev && st.ino === ino;
 *   } catch {
 *     return false; // the listing's own descriptor, closed by now
 *   }
 * });
 * await assert.rejects(
 *   openStreamOutput(`/proc/self/fd/${fd!.name}`, options),
 *   /is the input/,
 * );
 * await Deno.remove(path);
 * ```
 */
export interface StreamOutputOptions {
  /**
   * The files being read: the destination is refused when it is one of
   * them (by device and inode), before anything is written.
   * @default {[]}
   */
  inputs?: Iterable<FileIdentity>;
  /**
   * Refuse a destination that is a terminal (`/dev/tty`, a pty, standard
   * output when it is one), decided on the descriptor opened, before
   * anything is written: a person's screen is no place for an image's
   * binary bytes. A character device that is no terminal (`/dev/null`) is
   * taken.
   * @default {false}
   */
  refuseTerminal?: boolean;
}

/**
 * The refusal of a terminal as a destination, for
 * {@linkcode StreamOutputOptions.refuseTerminal}.
 */
function terminalRefused(path: string): IoError {
  return new IoError(
    "NOT_A_FILE",
    `Cannot write ${path}: it is a terminal, and an image is binary; name a file or a pipe`,
  );
}

/** A descriptor's own stat (`fstat`), or undefined if it is not open. */
function descriptorStat(fd: number): StatIdentity | undefined {
  try {
    const st = fstatSync(fd);
    return {
      dev: st.dev,
      ino: st.ino,
      rdev: st.rdev,
      isBlockDevice: st.isBlockDevice(),
      isSocket: st.isSocket(),
    };
  } catch {
    return undefined;
  }
}

/**
 * Which file an inherited descriptor is (`fstat`): standard input (0) or
 * output (1) redirected from or to a file, a pipe, a terminal.
 *
 * @param fd The descriptor.
 * @param name Its name for messages (`standard input`).
 * @returns The identity, or undefined when the descriptor is not open.
 *
 * @example The same file twice
 * ```ts
 * import assert from "node:assert";
 * import { descriptorIdentity } from "./stream_output.ts";
 * const a = descriptorIdentity(2, "standard error");
 * const b = descriptorIdentity(2, "fd 2");
 * assert.strictEqual(a?.ino, b?.ino);
 * ```
 */
export function descriptorIdentity(
  fd: number,
  name: string,
): FileIdentity | undefined {
  const info = descriptorStat(fd);
  return info && identityOf(info, name);
}

/**
 * A byte sink over `write`, whose errors say where they happened
 * (`Cannot write to standard output at offset N: no space left on
 * device`).
 */
function writableOver(
  write: (bytes: Uint8Array) => Promise<number>,
  where: string,
  close: () => void,
): WritableStream<Uint8Array> {
  let at = 0;
  return new WritableStream({
    async write(chunk) {
      let done = 0;
      try {
        while (done < chunk.length) {
          done += await write(chunk.subarray(done));
        }
      } catch (err) {
        throw new IoError(
          ioCode(err),
          `Cannot write ${where} at offset ${at + done}: ${ioReason(err)}`,
          { cause: err },
        );
      }
      at += chunk.length;
    },
    close,
    abort: close,
  }, { highWaterMark: 1 });
}

/**
 * Standard output as a byte sink. It is never closed. Refused when it is
 * one of the inputs (`convert in.qcow2 - 1<>in.qcow2`).
 *
 * @param options The inputs.
 * @returns The sink.
 * @throws {IoError} When standard output is one of the inputs.
 *
 * @example Write to standard output
 * ```ts
 * import { standardOutput } from "./stream_output.ts";
 * const writer = standardOutput().getWriter();
 * await writer.write(new TextEncoder().encode(""));
 * await writer.close();
 * ```
 */
export function standardOutput(
  options: StreamOutputOptions = {},
): WritableStream<Uint8Array> {
  const info = descriptorStat(1);
  if (info) assertNotInput(info, "standard output", options.inputs ?? []);
  return writableOver(
    (bytes) => Deno.stdout.write(bytes),
    "to standard output",
    () => {},
  );
}

/**
 * Opens `path` as a stream when it is one: a FIFO, a character device, or
 * anything a name in /dev or /proc leads to (`/dev/stdout`,
 * `/proc/self/fd/N`, a symbolic link to either), decided on what the path
 * resolves to. The bytes go in order from the start: zero ranges must be
 * written as zeros. A regular file reached so is truncated first (after
 * it is known not to be an input); a FIFO is opened when a reader opens
 * its other end. When the path leads to this process's standard output,
 * that descriptor is written (a socket, too).
 *
 * @param path The destination.
 * @param options The inputs, which it must not be.
 * @returns The stream (closing it closes the file), or undefined when the
 * path is a file to create or replace, or a block device: write those
 * with `OutputFile`.
 * @throws {IoError} When the path is one of the inputs, a directory, a
 * socket other than standard output, a terminal with `refuseTerminal`, or
 * cannot be opened.
 *
 * @example Write to a FIFO that a reader drains
 * ```ts
 * import assert from "node:assert";
 * import { openStreamOutput } from "./stream_output.ts";
 * const dir = await Deno.makeTempDir();
 * await new Deno.Command("mkfifo", { args: [`${dir}/pipe`] }).output();
 * const reading = Deno.readFile(`${dir}/pipe`);
 * const stream = await openStreamOutput(`${dir}/pipe`);
 * await ReadableStream.from([new Uint8Array([1, 2, 3])]).pipeTo(stream!);
 * assert.deepStrictEqual(await reading, new Uint8Array([1, 2, 3]));
 * assert.strictEqual((await Deno.stat(`${dir}/pipe`)).isFifo, true);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function openStreamOutput(
  path: string,
  options: StreamOutputOptions = {},
): Promise<WritableStream<Uint8Array> | undefined> {
  const dest = await inspectDestination(path);
  if (dest.kind !== "stream") return undefined;
  const inputs = [...options.inputs ?? []];
  const what = `write ${path}`;
  // By the name first: a FIFO that is an input is never opened (opening
  // it for writing would wait for a reader).
  assertNotInput(dest.info, path, inputs);
  // This process's standard output (a socket too, which cannot be opened
  // by name): its own descriptor is written.
  const stdout = descriptorStat(1);
  if (
    stdout && stdout.ino !== null && stdout.dev === dest.info.dev &&
    stdout.ino === dest.info.ino
  ) {
    if (options.refuseTerminal && Deno.stdout.isTerminal()) {
      throw terminalRefused(path);
    }
    return standardOutput({ inputs });
  }
  if (dest.info.isSocket) {
    throw new IoError(
      "NOT_A_FILE",
      `Cannot ${what}: it is a socket, which cannot be opened as a file`,
    );
  }
  // Never `truncate` on open: nothing changes before the descriptor is
  // known not to be an input.
  const file = await Deno.open(path, { write: true }).catch((err) => {
    throw fileError(what, err);
  });
  try {
    const info = await file.stat();
    assertNotInput(info, path, inputs);
    if (info.isDirectory) {
      throw new IoError("NOT_A_FILE", `Cannot ${what}: it is a directory`);
    }
    if (options.refuseTerminal && file.isTerminal()) {
      throw terminalRefused(path);
    }
    if (info.isFile) await file.truncate(0);
  } catch (err) {
    file.close();
    throw err instanceof IoError ? err : fileError(what, err);
  }
  let closed = false;
  return writableOver((bytes) => file.write(bytes), path, () => {
    if (closed) return;
    closed = true;
    file.close();
  });
}

/**
 * Which files an image may lead us to: the one gate every backing and
 * external data file passes, whoever follows it (the reader, `imageInfo`,
 * the tools' chain walks). A qcow2 image names other files, and the image
 * may come from a guest or the network: a raw disk whose first bytes a
 * guest wrote as a qcow2 header must not make us read host files (QEMU's
 * CVE-2008-2004).
 *
 * The rule: an image whose format was probed (not given) may only lead to
 * files inside its own directory, or on its own origin over HTTP; an image
 * without a directory (a stream, bytes) leads nowhere. Containment is
 * decided on the file the OS opens: the name is resolved as the OS resolves
 * it, every component and symbolic link in turn, the real path must lie
 * inside the real path of the image's directory, and that real path (no
 * link left in it) is what is opened. An image whose format was given
 * follows QEMU's rules: relative names resolve against its directory,
 * absolute names are allowed. A backing file keeps that trust only when
 * its parent's format was given and its parent names the backing format
 * (`backing_fmt`) that the file really has.
 *
 * @module
 */

import { Qcow2Error, type QemuWords } from "../format/errors.ts";
import { hostFiles, isNotFound, openHostFile } from "../io/host_files.ts";
import {
  HttpSource,
  type HttpSourceOptions,
  type HttpTransport,
} from "../io/http_source.ts";
import { fileReason } from "../io/os_errors.ts";
import { isAbsolute, join } from "../io/path.ts";
import type { FileIdentity, RandomAccessSource } from "../io/source.ts";

/**
 * Which backing and external data files an image may lead to.
 *
 * - `auto`: QEMU's rules for an image whose format was given; for a probed
 *   image, only files inside its own directory (over HTTP: on its origin)
 * - `contained`: only files inside the referring image's directory (or
 *   origin), whether its format was given or not
 * - `none`: none; an image that names a backing or data file is refused
 *
 * @example Open a chain made by qemu-img, keeping it to its directory
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../../mod.ts";
 * const dir = await Deno.makeTempDir();
 * const qemuImg = (...args: string[]) => new Deno.Command("qemu-img", { args }).output();
 * await qemuImg("create", "-q", "-f", "raw", `${dir}/base.raw`, "1M");
 * await qemuImg("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", `${dir}/top.qcow2`);
 * // Its format is given, yet it may only lead to files beside it.
 * await using image = await openImage(`${dir}/top.qcow2`, { format: "qcow2", references: "contained" });
 * assert.strictEqual(image.virtualSize, 1 << 20);
 * // "none" refuses any backing file.
 * await assert.rejects(openImage(`${dir}/top.qcow2`, { references: "none" }), /turned off/);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export type ReferencePolicy = "auto" | "contained" | "none";

/** An image that names other files: where it is and how far it is trusted. */
export interface Referrer {
  /** How the image was opened, for messages. */
  name: string;
  /**
   * The directory its relative names resolve against: a path (`""` is the
   * working directory; otherwise it ends with `/`) or a URL ending with
   * `/`; undefined when it has none (an image in memory).
   */
  dir: string | undefined;
  /** Whether QEMU's rules apply (its format was given), not containment. */
  trusted: boolean;
  /**
   * The top image's format, for the hint of a refusal (`pass -f vmdk to
   * follow it`); qcow2 when unknown.
   */
  format?: string;
  /**
   * The option that gives the top image's format, for the same hint
   * (`-F` for the second image of `compare`).
   * @default {"-f"}
   */
  formatOption?: string;
}

const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

/** Whether a name is an http(s) URL. */
function isHttp(name: string): boolean {
  return /^https?:\/\//i.test(name);
}

/**
 * The directory part of an image's name, as {@linkcode Referrer.dir} wants
 * it: `sub/top.qcow2` gives `sub/`, `top.qcow2` the working directory
 * (`""`), a URL the URL of its directory. Names of images without a place
 * (`<buffer>`, `<stream>`) give undefined.
 *
 * @param name The path or URL an image was opened by.
 * @returns The directory, or undefined.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { directoryOf } from "./references.ts";
 * assert.strictEqual(directoryOf("vm/disk.qcow2"), "vm/");
 * assert.strictEqual(directoryOf("disk.qcow2"), "");
 * assert.strictEqual(directoryOf("https://example.org/img/d.qcow2?x=1"), "https://example.org/img/");
 * assert.strictEqual(directoryOf("<buffer>"), undefined);
 * ```
 */
export function directoryOf(name: string | undefined): string | undefined {
  if (name === undefined || name === "" || name.startsWith("<")) {
    return undefined;
  }
  if (SCHEME.test(name)) return new URL(".", name).href;
  const slash = name.lastIndexOf("/");
  return slash < 0 ? "" : name.slice(0, slash + 1);
}

/**
 * Resolves a name an image gives (QEMU's `path_combine()`): relative to the
 * image's directory, without normalizing (`sub/` and `../base.qcow2` give
 * `sub/../base.qcow2`, as qemu-img prints it); URLs and absolute paths as
 * they are; over HTTP, as a URL relative to the image's URL.
 *
 * @param dir The directory of the image that names the file.
 * @param name The name stored in the image.
 * @returns The name to open, or undefined when a relative name has no
 * directory to resolve against.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { resolveName } from "./references.ts";
 * assert.strictEqual(resolveName("sub/", "../base.qcow2"), "sub/../base.qcow2");
 * assert.strictEqual(resolveName("https://h/a/", "/b.qcow2"), "https://h/b.qcow2");
 * assert.strictEqual(resolveName(undefined, "base.qcow2"), undefined);
 * ```
 */
export function resolveName(
  dir: string | undefined,
  name: string,
): string | undefined {
  if (SCHEME.test(name)) return name;
  if (dir !== undefined && isHttp(dir)) return new URL(name, dir).href;
  if (isAbsolute(name)) return name;
  return dir === undefined ? undefined : dir + name;
}

/** What an image names: a backing file or an external data file. */
export type ReferenceKind = "backing file" | "external data file";

/**
 * A file an image names, as the gate lets it be followed: what to call it
 * and what to open.
 */
export interface Reference {
  /** Which kind of file it is, for messages. */
  what: ReferenceKind;
  /**
   * The name resolved as QEMU resolves it ({@linkcode resolveName}), for
   * messages and reports (what qemu-img prints).
   */
  name: string;
  /**
   * What to open. For a local file held to its directory, the real path
   * that was checked (no link left in it); otherwise `name`.
   */
  path: string;
  /** Whether `path` was checked to lie inside the referrer's directory. */
  contained: boolean;
}

/**
 * The referrer of the image a walk starts at: trusted (QEMU's rules) when
 * its format was given, with relative names resolving against
 * `relativeTo` or else the directory of its own name. Over HTTP, give the
 * URL that answered (`source.url ?? name`, after redirects) as `name` and
 * the URL as named as `label`: the origin that counts is the one that
 * answered.
 *
 * @param name The path or URL the image was opened by, or a source's name.
 * @param formatGiven Whether the caller gave the image's format.
 * @param relativeTo The directory its relative names resolve against,
 * when not its own.
 * @param label What to call it in messages (default: `name`).
 * @returns The referrer.
 *
 * @example A probed image beside its backing file
 * ```ts
 * import assert from "node:assert";
 * import { topReferrer } from "./references.ts";
 * assert.deepStrictEqual(topReferrer("vm/disk.raw", false), { name: "vm/disk.raw", dir: "vm/", trusted: false });
 * assert.strictEqual(topReferrer("<stream>", true, "/srv").dir, "/srv/");
 * ```
 */
export function topReferrer(
  name: string,
  formatGiven: boolean,
  relativeTo?: string,
  label?: string,
): Referrer {
  return {
    name: label ?? name,
    dir: relativeTo === undefined
      ? directoryOf(name)
      : relativeTo === "" || relativeTo.endsWith("/")
      ? relativeTo
      : relativeTo + "/",
    trusted: formatGiven,
  };
}

/**
 * The referrer of a backing file, whose own names are judged in turn: its
 * directory is its own (over HTTP, that of the URL that answered), and it
 * keeps QEMU's rules only when its parent had them and names its format
 * (trust passes down only through named formats: a probed backing file is
 * judged as any probed image).
 *
 * @param parent The image that named the backing file.
 * @param ref The backing file, as the gate allowed it.
 * @param declared The backing format the parent names, if any.
 * @param source The backing file as opened (its `url`, when a redirect
 * led elsewhere, is where its own names resolve).
 * @returns The backing file's referrer.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { backingReferrer } from "./references.ts";
 * const parent = { name: "top.vmdk", dir: "", trusted: true, format: "vmdk" };
 * const ref = { what: "backing file" as const, name: "b/base.vmdk", path: "b/base.vmdk", contained: false };
 * assert.deepStrictEqual(backingReferrer(parent, ref, "vmdk"), {
 *   name: "b/base.vmdk",
 *   dir: "b/",
 *   trusted: true,
 *   format: "vmdk", // the top image's, for the -f hint of a refusal
 * });
 * assert.strictEqual(backingReferrer(parent, ref, undefined).trusted, false);
 * ```
 */
export function backingReferrer(
  parent: Referrer,
  ref: Reference,
  declared: string | undefined,
  source?: RandomAccessSource,
): Referrer {
  return {
    name: ref.name,
    dir: directoryOf(source?.url ?? ref.name),
    trusted: parent.trusted && declared !== undefined,
    ...(parent.format === undefined ? {} : { format: parent.format }),
    ...(parent.formatOption === undefined
      ? {}
      : { formatOption: parent.formatOption }),
  };
}

/** Whether any component of a name is `..` (either slash separates). */
function climbs(name: string): boolean {
  return name.split(/[\\/]/).includes("..");
}

/**
 * Decides whether a backing or external data file named by an image may be
 * followed, and what to open: the one decision every follower asks.
 *
 * A local file held to its directory (a probed image, or the `contained`
 * policy) is located as the OS resolves the name, links included, and
 * allowed only when its real path lies inside the real path of the
 * referrer's directory; the reference then opens that real path. Without
 * the runtime's file module (core.ts alone, where names only mean what
 * the caller's `openSource` makes of them) links cannot be resolved, so
 * an absolute name or a `..` component is refused outright.
 *
 * @param referrer The image that names the file.
 * @param stored The name stored in the image.
 * @param what `backing file` or `external data file`, for messages.
 * @param policy Which files may be followed.
 * @returns The reference: its name for messages and the path to open.
 * @throws {Qcow2Error} With code `UNTRUSTED_REFERENCE` when the file may
 * not be followed, naming it and what would allow it; with code `BACKING`
 * when a file it may follow does not exist.
 *
 * @example A probed image may not leave its directory
 * ```ts
 * import assert from "node:assert";
 * import { followReference } from "./references.ts";
 * const probed = { name: "vm/disk.raw", dir: "vm/", trusted: false };
 * await assert.rejects(
 *   followReference(probed, "/etc/passwd", "backing file", "auto"),
 *   /outside the directory of vm\/disk.raw.*-f qcow2/,
 * );
 * const given = { ...probed, trusted: true };
 * const ref = await followReference(given, "/srv/base.raw", "backing file", "auto");
 * assert.strictEqual(ref.path, "/srv/base.raw");
 * ```
 */
export async function followReference(
  referrer: Referrer,
  stored: string,
  what: ReferenceKind,
  policy: ReferencePolicy,
): Promise<Reference> {
  // A refusal names the file as the image names it; a missing file, as
  // it was looked for.
  const refuse = (reason: string, code: "UNTRUSTED_REFERENCE" | "BACKING") =>
    new Qcow2Error(
      code,
      `Cannot open ${what} "${
        code === "BACKING" ? resolved : stored
      }": ${reason}`,
      {
        field: what === "backing file" ? "backing_file_offset" : "data_file",
      },
    );
  const { dir } = referrer;
  const resolved = resolveName(dir, stored);
  const untrusted = (reason: string) => refuse(reason, "UNTRUSTED_REFERENCE");
  if (policy === "none") {
    throw untrusted(
      `following backing and data files is turned off (references: "none")`,
    );
  }
  const hint = policy === "auto" && !referrer.trusted
    ? `; its format was probed: pass ${referrer.formatOption ?? "-f"} ${
      referrer.format ?? "qcow2"
    } to follow it`
    : policy === "contained"
    ? ` (references: "contained")`
    : "";
  if (dir === undefined && !referrer.trusted) {
    throw untrusted(
      `${referrer.name} has no directory that could hold it${hint}`,
    );
  }
  if (resolved === undefined) {
    throw untrusted(
      `${referrer.name} is not in a directory that could hold it`,
    );
  }
  const reference = (path: string, contained: boolean): Reference => ({
    what,
    name: resolved,
    path,
    contained,
  });
  const remote = dir !== undefined && isHttp(dir);
  if (remote && !isHttp(resolved)) {
    throw untrusted(`an image read over HTTP may only name http(s) files`);
  }
  if (referrer.trusted && policy === "auto") return reference(resolved, false);

  if (remote) {
    if (new URL(resolved).origin !== new URL(dir).origin) {
      throw untrusted(`it is on another origin than ${referrer.name}${hint}`);
    }
    return reference(resolved, false);
  }
  const outside = `it is outside the directory of ${referrer.name}${hint}`;
  if (dir === undefined || SCHEME.test(resolved)) throw untrusted(outside);
  const files = hostFiles();
  if (!files) {
    // Names are only names here: nothing can tell where a link leads, so
    // nothing may climb.
    if (isAbsolute(stored)) throw untrusted(outside);
    if (climbs(stored)) {
      throw untrusted(
        `its name has a ".." component, which cannot be resolved without file access${hint}`,
      );
    }
    return reference(resolved, true);
  }
  const located = await files.locate(dir, resolved);
  if (!located.inside) throw untrusted(outside);
  if (located.path === undefined) {
    const reason = isNotFound(located.error)
      ? "no such file"
      : fileReason(located.error);
    throw refuse(reason, "BACKING");
  }
  return reference(located.path, true);
}

/**
 * Opens a file path, or an http(s) URL with Range requests: how images,
 * backing and data files are opened by default. Paths need the runtime's
 * file access (`mod.ts` in Deno); URLs work wherever `fetch` does.
 *
 * @param path A path or URL.
 * @param name What to call a local file in messages and reports (default:
 * `path`), such as the name an image gives for the real path opened.
 * @param http How a URL is fetched (timeouts, retries, redirects).
 * @returns The source.
 * @throws {TypeError} For a path where the runtime has no file access
 * (`core.ts` in a browser or Node).
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import "../../mod.ts"; // lends the reader Deno's file access
 * import { openByName } from "./references.ts";
 * const path = await Deno.makeTempFile();
 * await using src = await openByName(path, "empty.raw") as AsyncDisposable & { size: number; name: string };
 * assert.deepStrictEqual([src.size, src.name], [0, "empty.raw"]);
 * await Deno.remove(path);
 * ```
 */
export function openByName(
  path: string,
  name: string = path,
  http: HttpSourceOptions = {},
): Promise<RandomAccessSource & AsyncDisposable> {
  return isHttp(path) ? HttpSource.open(path, http) : openHostFile(path, name);
}

/**
 * The longest backing chain any command follows, the top image not
 * counted: the one limit of the reader and the tools alike (QEMU has no
 * limit but its stack; a longer chain is refused before anything more is
 * opened).
 *
 * @example A chain limit for a caller that wants fewer
 * ```ts
 * import assert from "node:assert";
 * import { MAX_BACKING_DEPTH } from "./references.ts";
 * const limit = Math.min(8, MAX_BACKING_DEPTH);
 * assert.strictEqual(limit, 8);
 * ```
 */
export const MAX_BACKING_DEPTH = 256;

/**
 * Options of a {@linkcode ReferenceGate}.
 *
 * @example A gate that follows no chain longer than one image
 * ```ts
 * import assert from "node:assert";
 * import { type GateOptions, ReferenceGate, topReferrer } from "./references.ts";
 * const options: GateOptions = { policy: "auto", maxDepth: 1 };
 * const gate = new ReferenceGate(options);
 * const top = topReferrer("/srv/vm/top.qcow2", true);
 * const mid = await gate.backing(top, "mid.qcow2");
 * assert.strictEqual(mid.path, "/srv/vm/mid.qcow2");
 * await assert.rejects(gate.backing(top, "base.qcow2"), /deeper than 1 images/);
 * ```
 */
export interface GateOptions {
  /**
   * Which files may be followed.
   * @default {"auto"}
   */
  policy?: ReferencePolicy;
  /**
   * Longest backing chain accepted (the top image not counted).
   * @default {256} ({@linkcode MAX_BACKING_DEPTH})
   */
  maxDepth?: number;
  /**
   * Opens what a reference names (its `path`); default: local files
   * through the runtime's file module, http(s) URLs with Range requests
   * that may not be redirected off the origin asked.
   */
  openSource?: (path: string) => Promise<RandomAccessSource>;
  /** How the default opener fetches URLs (idle timeout, retries...). */
  http?: HttpTransport;
}

/**
 * One walk down a backing chain through the gate: every backing and data
 * file is decided by {@linkcode followReference}, opened where it was
 * checked, and the chain is refused when it would grow past its limit or
 * loop. Images are known by what they are, whatever names lead to them: a
 * local file by the device and inode of the descriptor opened (and, before
 * opening the next one, of the file its name leads to, so that an image
 * met again is refused without being opened again), a URL by the URL that
 * answered; a source that is neither, by the name it was opened by.
 *
 * @example Walk a chain made by qemu-img
 * ```ts
 * import assert from "node:assert";
 * import "../../mod.ts"; // lends the reader Deno's file access
 * import { openByName, ReferenceGate, topReferrer } from "./references.ts";
 * const dir = await Deno.makeTempDir();
 * const qemuImg = (...args: string[]) => new Deno.Command("qemu-img", { args }).output();
 * await qemuImg("create", "-q", "-f", "raw", `${dir}/base.raw`, "1M");
 * await qemuImg("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", `${dir}/top.qcow2`);
 * const gate = new ReferenceGate();
 * await using top = await openByName(`${dir}/top.qcow2`);
 * await gate.start(top, `${dir}/top.qcow2`);
 * const referrer = topReferrer(`${dir}/top.qcow2`, false);
 * const base = await gate.open(await gate.backing(referrer, "base.raw"));
 * assert.strictEqual(base.size, 1 << 20);
 * await base.close?.();
 * // The top image again, by another name: the chain would loop.
 * await assert.rejects(gate.backing(referrer, "./top.qcow2"), /loops back/);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class ReferenceGate {
  readonly #policy: ReferencePolicy;
  readonly #maxDepth: number;
  readonly #openSource:
    | ((path: string) => Promise<RandomAccessSource>)
    | undefined;
  readonly #http: HttpTransport;
  /** What the images of the chain are (see {@linkcode placeKeys}). */
  readonly #seen = new Set<string>();
  #depth = 0;

  /**
   * @param options Policy, depth limit, how to open files.
   * @throws {RangeError} When `maxDepth` is not a non-negative integer.
   */
  constructor(options: GateOptions = {}) {
    const maxDepth = options.maxDepth ?? MAX_BACKING_DEPTH;
    if (!Number.isSafeInteger(maxDepth) || maxDepth < 0) {
      throw new RangeError(
        `Cannot open image: maxBackingDepth ${maxDepth} is not an integer in [0, 2^53)`,
      );
    }
    this.#policy = options.policy ?? "auto";
    this.#maxDepth = maxDepth;
    this.#openSource = options.openSource;
    this.#http = options.http ?? {};
  }

  /**
   * Starts the walk at the top image, remembering what it is.
   *
   * @param source The top image as opened.
   * @param place The path or URL it was opened by, when it has one.
   * @returns When it is remembered.
   */
  async start(
    source: RandomAccessSource,
    place: string | undefined,
  ): Promise<void> {
    const named = place !== undefined && !place.startsWith("<");
    for (const key of sourceKeys(source, named ? place : undefined)) {
      this.#seen.add(key);
    }
    if (named) {
      for (const key of await placeKeys(place)) this.#seen.add(key);
    }
  }

  /**
   * Decides an external data file.
   *
   * @param referrer The image that names it.
   * @param stored The name stored in the image.
   * @returns The reference.
   * @throws {Qcow2Error} As {@linkcode followReference}.
   */
  dataFile(referrer: Referrer, stored: string): Promise<Reference> {
    return followReference(
      referrer,
      stored,
      "external data file",
      this.#policy,
    );
  }

  /**
   * Decides the next backing file of the chain: refused when the chain
   * would grow deeper than the limit, or when its name leads to an image
   * already in it (decided before it is opened; {@linkcode open} decides
   * again on the file it opens).
   *
   * @param referrer The image that names it (the last one of the walk).
   * @param stored The name stored in the image.
   * @returns The reference.
   * @throws {Qcow2Error} As {@linkcode followReference}; with code
   * `BACKING` for a chain too deep or that loops.
   */
  async backing(referrer: Referrer, stored: string): Promise<Reference> {
    if (this.#depth + 1 > this.#maxDepth) {
      throw chainError(
        stored,
        `the backing chain is deeper than ${this.#maxDepth} images`,
      );
    }
    const ref = await followReference(
      referrer,
      stored,
      "backing file",
      this.#policy,
    );
    for (const key of await placeKeys(ref.path)) {
      if (this.#seen.has(key)) throw loopError(ref);
    }
    this.#depth++;
    return ref;
  }

  /**
   * Opens what a reference names: the path that was checked. A local file
   * held to its directory is then checked once more on what was opened
   * (same device and inode as its real path, which still has no link in
   * it), so that a link swapped in between is caught. A URL must be
   * answered from the origin it was asked from: the default opener
   * refuses a redirect elsewhere before following it, and any opener's
   * source is judged on the URL that answered. A backing file is refused
   * when what was opened is an image already in the chain.
   *
   * @param ref The reference, from this gate.
   * @returns The source; the caller closes it.
   * @throws {Qcow2Error} With code `BACKING` when it cannot be opened or
   * the chain loops; `UNTRUSTED_REFERENCE` when the file changed under the
   * check, or a URL was answered from another origin.
   */
  async open(ref: Reference): Promise<RandomAccessSource> {
    let source: RandomAccessSource;
    try {
      source = this.#openSource
        ? await this.#openSource(ref.path)
        : await openByName(ref.path, ref.name, {
          ...this.#http,
          stayOnOrigin: true,
        });
    } catch (err) {
      const reason = isNotFound(err) ? "no such file" : (err as Error).message;
      throw new Qcow2Error(
        "BACKING",
        `Cannot open ${ref.what} "${ref.name}": ${reason}`,
        { cause: err },
      );
    }
    try {
      await this.#judge(ref, source);
    } catch (err) {
      await source.close?.();
      throw err;
    }
    return source;
  }

  /** The checks on what was opened for a reference (see {@linkcode open}). */
  async #judge(ref: Reference, source: RandomAccessSource): Promise<void> {
    if (
      ref.contained && await hostFiles()?.isOpenedAt(source, ref.path) === false
    ) {
      throw new Qcow2Error(
        "UNTRUSTED_REFERENCE",
        `Cannot open ${ref.what} "${ref.name}": it changed while it was opened (${ref.path} is no longer the file opened)`,
      );
    }
    const asked = isHttp(ref.path) ? new URL(ref.path).origin : undefined;
    if (
      asked !== undefined && source.url !== undefined &&
      new URL(source.url).origin !== asked
    ) {
      throw new Qcow2Error(
        "UNTRUSTED_REFERENCE",
        `Cannot open ${ref.what} "${ref.name}": it was answered by ${source.url}, on another origin than ${asked}`,
      );
    }
    if (ref.what !== "backing file") return;
    const keys = [
      ...sourceKeys(source, ref.path),
      ...await placeKeys(ref.path),
    ];
    if (keys.some((key) => this.#seen.has(key))) throw loopError(ref);
    for (const key of keys) this.#seen.add(key);
  }
}

/** A backing chain refused as a whole (too deep, or looping). */
function chainError(
  stored: string,
  reason: string,
  qemu?: QemuWords,
): Qcow2Error {
  return new Qcow2Error(
    "BACKING",
    `Cannot open backing file "${stored}": ${reason}`,
    { field: "backing_file_offset", offset: 8, qemu },
  );
}

/** A backing file that is an image already in the chain. */
function loopError(ref: Reference): Qcow2Error {
  return chainError(ref.name, `the backing chain loops back to ${ref.name}`, {
    message: `Backing file '${ref.name}' creates an infinite loop.`,
  });
}

/** The key of a local file: device and inode (a block device: the device). */
function fileKeys(id: FileIdentity): string[] {
  const keys = [`file ${id.dev}:${id.ino}`];
  if (id.rdev !== undefined) keys.push(`device ${id.rdev}`);
  return keys;
}

/**
 * What an opened source is: the device and inode of its descriptor, or
 * the URL that answered (and the URL asked); otherwise the name it was
 * opened by, normalised.
 */
function sourceKeys(
  source: RandomAccessSource,
  place: string | undefined,
): string[] {
  const id = hostFiles()?.identity(source);
  if (id) return fileKeys(id);
  const urls = [source.url, place].filter((u) => u !== undefined && isHttp(u));
  if (urls.length > 0) return urls.map((u) => `url ${new URL(u!).href}`);
  return place === undefined ? [] : [`name ${join(place)}`];
}

/**
 * What a name leads to before it is opened: the device and inode of the
 * local file it names now (links followed), a URL as asked; a name that
 * leads to no local file, the name normalised.
 */
async function placeKeys(place: string): Promise<string[]> {
  if (isHttp(place)) return [`url ${new URL(place).href}`];
  if (SCHEME.test(place)) return [`name ${place}`];
  const id = await hostFiles()?.identityAt(place);
  return id ? fileKeys(id) : [`name ${join(place)}`];
}

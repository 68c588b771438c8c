/**
 * Which files an image may lead us to. A qcow2 image names other files,
 * its backing file and its external data file, and the image may come from
 * a guest or the network: a raw disk whose first bytes a guest wrote as a
 * qcow2 header must not make us read host files (QEMU's CVE-2008-2004).
 *
 * The rule: an image whose format was probed (not given) may only lead to
 * files inside its own directory, or on its own origin over HTTP. An image
 * whose format was given follows QEMU's rules: relative names resolve
 * against its directory, absolute names are allowed. A backing file keeps
 * that trust only when its parent's format was given and its parent names
 * the backing format (`backing_fmt`) that the file really has.
 *
 * @module
 */

import { Qcow2Error } from "../format/errors.ts";
import { hostFiles } from "../io/_host_files.ts";
import type { RandomAccessSource } from "../io/source.ts";
import { isAbsolute, join } from "../io/_path.ts";

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
 * The directory the names an opened image gives resolve against: that of
 * the URL that answered when the image came over HTTP (after redirects,
 * {@linkcode RandomAccessSource.url}), else that of the name it was
 * opened by. Over HTTP, the origin that counts is the one that answered,
 * not the one asked.
 *
 * @param name The path or URL the image was opened by.
 * @param source The opened image.
 * @returns The directory, or undefined (see {@linkcode directoryOf}).
 *
 * @example A download link that redirected
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { directoryOfSource } from "./references.ts";
 * const answered = Object.assign(new BytesSource(new Uint8Array(0)), {
 *   url: "https://cdn.example.org/v2/disk.qcow2",
 * });
 * assert.strictEqual(
 *   directoryOfSource("https://example.org/latest", answered),
 *   "https://cdn.example.org/v2/",
 * );
 * ```
 */
export function directoryOfSource(
  name: string | undefined,
  source: RandomAccessSource,
): string | undefined {
  return directoryOf(source.url ?? name);
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

/**
 * Whether `target` lies inside directory `dir` (local paths). The runtime's
 * file module checks on the file system, links resolved; without one
 * (core.ts alone, where only the caller's `openSource` opens names) names
 * are only names, and the check is on their text.
 */
async function insideDirectory(dir: string, target: string): Promise<boolean> {
  const files = hostFiles();
  if (files) return await files.contains(dir, target);
  const root = join(dir === "" ? "." : dir);
  const path = join(target);
  if (root === ".") {
    return !isAbsolute(path) && path !== ".." && !path.startsWith("../");
  }
  return path.startsWith(root.endsWith("/") ? root : root + "/");
}

/**
 * Resolves a backing or external data file named by an image and checks
 * that the policy allows following it.
 *
 * @param referrer The image that names the file.
 * @param name The name stored in the image.
 * @param what `backing file` or `external data file`, for messages.
 * @param policy Which files may be followed.
 * @returns The resolved name to open.
 * @throws {Qcow2Error} With code `UNTRUSTED_REFERENCE` when the file may
 * not be followed, naming it and what would allow it.
 *
 * @example A probed image may not leave its directory
 * ```ts
 * import assert from "node:assert";
 * import { followReference } from "./references.ts";
 * const probed = { name: "vm/disk.raw", dir: "vm/", trusted: false };
 * assert.strictEqual(await followReference(probed, "base.qcow2", "backing file", "auto"), "vm/base.qcow2");
 * await assert.rejects(
 *   followReference(probed, "/etc/passwd", "backing file", "auto"),
 *   /outside the directory of vm\/disk.raw.*-f qcow2/,
 * );
 * const given = { ...probed, trusted: true };
 * assert.strictEqual(await followReference(given, "/srv/base.raw", "backing file", "auto"), "/srv/base.raw");
 * ```
 */
export async function followReference(
  referrer: Referrer,
  name: string,
  what: "backing file" | "external data file",
  policy: ReferencePolicy,
): Promise<string> {
  const refuse = (reason: string) =>
    new Qcow2Error(
      "UNTRUSTED_REFERENCE",
      `Cannot open ${what} "${name}": ${reason}`,
      {
        field: what === "backing file" ? "backing_file_offset" : "data_file",
      },
    );
  if (policy === "none") {
    throw refuse(
      `following backing and data files is turned off (references: "none")`,
    );
  }
  const { dir } = referrer;
  const resolved = resolveName(dir, name);
  if (resolved === undefined || (dir === undefined && !referrer.trusted)) {
    throw refuse(
      `${referrer.name} is not in a directory that could hold it`,
    );
  }
  const remote = dir !== undefined && isHttp(dir);
  if (remote && !isHttp(resolved)) {
    throw refuse(`an image read over HTTP may only name http(s) files`);
  }
  if (referrer.trusted && policy === "auto") return resolved;

  const hint = policy === "auto"
    ? `; its format was probed: pass -f qcow2 to follow it`
    : ` (references: "contained")`;
  if (remote) {
    if (new URL(resolved).origin !== new URL(dir).origin) {
      throw refuse(
        `it is on another origin than ${referrer.name}${hint}`,
      );
    }
    return resolved;
  }
  if (
    dir === undefined || SCHEME.test(resolved) ||
    !(await insideDirectory(dir, resolved))
  ) {
    throw refuse(
      `it is outside the directory of ${referrer.name}${hint}`,
    );
  }
  return resolved;
}

// qemu-img's ways of naming an image, reduced to the part that names a
// local file: `file:PATH`, `json:{...}` and `--image-opts` options naming
// the format (`driver`), the file (`file.filename`, with
// `file.driver=file`) and its external data file (`data-file.filename`). Anything else these syntaxes can say (backing and
// data file overrides, other protocols, cache and driver options) is
// refused in one line: the image is then opened as a path is, through the
// same reference rules (its backing file comes from its header and is
// followed as any other's). Where a command reads guest data only (convert's
// SRC), the `null-co` driver is taken too, with `read-zeroes` on: an image
// of `size` zero bytes (1 GiB if no size is given, as in QEMU), no file.
import { parseSize, UsageError } from "./_util.ts";

/** An image named in qemu-img's syntax, as we open it. */
export interface ImageName {
  /** The file to open (also the name reports give it). */
  path: string;
  /** The format the name gives (`driver`), if any. */
  format?: string;
  /**
   * The external data file the name gives (`data-file.filename`), in
   * place of the one the header names.
   */
  dataFile?: string;
  /**
   * The `null-co` driver: the image reads as this many zero bytes, and
   * names no file (`path` is then the name as given, for messages).
   */
  zeros?: number;
  /**
   * The secret `encrypt.key-secret` names: with it, qemu-img names the
   * image by its options (`json:{...}`), not by its file.
   */
  keySecret?: string;
}

/** How a name is read. */
export interface ImageNameOptions {
  /** `--image-opts`: the name is `key=value,...` options. */
  imageOpts?: boolean;
  /**
   * IDs of the `--object secret` objects given: an `encrypt.key-secret`
   * option must name one (the secret is not read: the commands that take
   * these names do not decrypt).
   */
  secrets?: readonly string[];
  /**
   * The command looks no secret up (`info`: like qemu-img's, it reads no
   * encrypted data), so an `encrypt.key-secret` need not name a
   * `--object secret`.
   */
  noSecretLookup?: boolean;
  /** The `null-co` driver is taken (convert's SRC; see {@linkcode ImageName.zeros}). */
  nullSource?: boolean;
}

/**
 * The file (and format) a qemu-img image name names.
 *
 * @throws {UsageError} For a name in qemu-img's syntax that names
 * something else than a local file, or options we do not take.
 */
export function parseImageName(
  name: string,
  options: ImageNameOptions = {},
): ImageName {
  if (options.imageOpts) {
    return fromOptions(name, splitOptions(name), options);
  }
  if (name.startsWith("json:")) {
    return fromOptions(name, flatten(parseJson(name)), options);
  }
  if (name.startsWith("file:")) return { path: plainPath(name.slice(5)) };
  return { path: name };
}

/**
 * A path given after `file:`. A relative path whose first component has
 * a colon is written `./PATH`, as QEMU names it (so that it is not read
 * as another protocol's prefix); so is `-`, a file, not standard input.
 */
function plainPath(path: string): string {
  if (path === "-") return "./-";
  const colon = path.indexOf(":");
  const slash = path.indexOf("/");
  return colon >= 0 && (slash < 0 || colon < slash) ? `./${path}` : path;
}

/** The options qemu-img's `key=value,...` syntax gives (`,,` is a comma). */
function splitOptions(text: string): Map<string, unknown> {
  const out = new Map<string, unknown>();
  let part = "";
  const flush = () => {
    const eq = part.indexOf("=");
    if (eq < 0) {
      throw new UsageError(
        `Cannot open image ${text}: option "${part}" has no value (key=value expected)`,
      );
    }
    out.set(part.slice(0, eq), part.slice(eq + 1));
    part = "";
  };
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== ",") part += text[i];
    else if (text[i + 1] === ",") part += text[i++];
    else flush();
  }
  flush();
  return out;
}

/**
 * The object of a `json:` name. QEMU's parser also takes single-quoted
 * strings: they are read as JSON strings.
 */
function parseJson(name: string): unknown {
  const text = name.slice(5);
  let json = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"' || c === "'") {
      let s = "";
      let j = i + 1;
      for (; j < text.length && text[j] !== c; j++) {
        if (text[j] === "\\" && j + 1 < text.length) s += text[j++];
        s += text[j];
      }
      json += c === '"' ? `"${s}"` : JSON.stringify(s.replaceAll("\\'", "'"));
      i = j;
      continue;
    }
    json += c;
  }
  try {
    return JSON.parse(json);
  } catch {
    throw new UsageError(
      `Cannot open image ${name}: the json: name is not a JSON object`,
    );
  }
}

/** Nested objects as dotted keys (`{"file": {"filename": x}}`: `file.filename`). */
function flatten(
  value: unknown,
  prefix = "",
  out = new Map<string, unknown>(),
) {
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) {
      flatten(v, prefix === "" ? k : `${prefix}.${k}`, out);
    }
  } else out.set(prefix, value);
  return out;
}

/** The file and format of a name's options; any other option is refused. */
function fromOptions(
  name: string,
  opts: Map<string, unknown>,
  options: ImageNameOptions,
): ImageName {
  const refuse = (why: string): never => {
    throw new UsageError(`Cannot open image ${name}: ${why}`);
  };
  if (opts.get("driver") === "null-co") {
    if (!options.nullSource) {
      refuse('driver "null-co" is only taken as convert\'s SRC');
    }
    return { path: name, zeros: nullSize(opts, refuse) };
  }
  let path: string | undefined;
  let format: string | undefined;
  let dataFile: string | undefined;
  let keySecret: string | undefined;
  for (const [key, value] of opts) {
    if (typeof value !== "string") {
      refuse(`option "${key}" must be a string`);
    }
    const text = value as string;
    switch (key) {
      case "driver":
        format = text;
        break;
      case "file.filename":
        path = text;
        break;
      case "data-file.filename":
        dataFile = text;
        break;
      case "file.driver":
      case "data-file.driver":
        if (text !== "file") {
          refuse(
            `file.driver "${text}" is not supported (only local files: "file")`,
          );
        }
        break;
      case "encrypt.key-secret":
        if (
          !options.noSecretLookup && !(options.secrets ?? []).includes(text)
        ) {
          refuse(`no secret with id '${text}' (give it with --object secret)`);
        }
        keySecret = text;
        break;
      default:
        refuse(
          `option "${key}" is not supported (only driver, file.filename, data-file.filename, their driver "file", and encrypt.key-secret)`,
        );
    }
  }
  if (path === undefined) refuse("no file.filename names the image file");
  const named: ImageName = { path: path! };
  if (format !== undefined) named.format = format;
  if (dataFile !== undefined) named.dataFile = dataFile;
  if (keySecret !== undefined) named.keySecret = keySecret;
  return named;
}

/** QEMU's size of a `null-co` image given no `size`. */
const NULL_CO_SIZE = 1 << 30;

/**
 * The size of a `null-co` image: its options are `driver`, `size` (a
 * number, or a size like 64k) and `read-zeroes`, which must be on (off,
 * QEMU's default, leaves the bytes read undefined).
 */
function nullSize(
  opts: Map<string, unknown>,
  refuse: (why: string) => never,
): number {
  let size = NULL_CO_SIZE;
  let zeroes = false;
  for (const [key, value] of opts) {
    if (key === "driver") continue;
    if (key === "size" && typeof value === "number") {
      if (!Number.isSafeInteger(value) || value < 0) {
        refuse(`size ${value} is not a non-negative integer`);
      }
      size = value;
    } else if (key === "size" && typeof value === "string") {
      size = parseSize(value, "size");
    } else if (key === "read-zeroes") {
      zeroes = value === true || value === "on" || value === "true";
    } else {
      refuse(
        `option "${key}" of driver "null-co" is not supported (only size and read-zeroes)`,
      );
    }
  }
  if (!zeroes) {
    refuse(
      'driver "null-co" is read only with "read-zeroes" on (without it, what it reads is undefined)',
    );
  }
  return size;
}

/**
 * The IDs of `--object` values, which must be `secret` objects (nothing
 * else is taken).
 *
 * @throws {UsageError} For another kind of object, or one without an ID.
 */
export function secretIds(objects: readonly string[]): string[] {
  return objects.map((object) => {
    const opts = splitOptions(
      object.replace(/^secret,/, "qom-type=secret,"),
    );
    if (opts.get("qom-type") !== "secret") {
      throw new UsageError(
        `Cannot use --object ${object}: only secret objects are taken (nothing is decrypted here)`,
      );
    }
    const id = opts.get("id");
    if (typeof id !== "string" || id === "") {
      throw new UsageError(`Cannot use --object ${object}: it has no id`);
    }
    return id;
  });
}

/**
 * The name qemu-img gives an image opened with `encrypt.key-secret` (its
 * options as JSON, in the order QEMU keeps them), or `path` without one.
 */
export function qemuImageName(
  path: string,
  format: string,
  keySecret: string | undefined,
): string {
  if (keySecret === undefined) return path;
  const q = JSON.stringify;
  return `json:{${q("encrypt.key-secret")}: ${q(keySecret)}, "driver": ${
    q(format)
  }, "file": {"driver": "file", "filename": ${q(path)}}}`;
}

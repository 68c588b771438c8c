// Path arithmetic for names images give each other (backing files, data
// files), without node:path, so the reader runs where there is none.
// Semantics of POSIX `path.dirname`, `path.join` and `path.isAbsolute`;
// a Windows drive or UNC path counts as absolute too.

/** Whether `path` is absolute. */
export function isAbsolute(path: string): boolean {
  return path.startsWith("/") || /^[a-z]:[\\/]/i.test(path) ||
    path.startsWith("\\\\");
}

/** The directory part of `path` ("." when there is none). */
export function dirname(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  if (trimmed === "") return path.startsWith("/") ? "/" : ".";
  const slash = trimmed.lastIndexOf("/");
  if (slash < 0) return ".";
  if (slash === 0) return "/";
  return trimmed.slice(0, slash).replace(/\/+$/, "") || "/";
}

/** Joins path pieces and normalizes `.`, `..` and repeated slashes. */
export function join(...parts: string[]): string {
  const joined = parts.filter((p) => p !== "").join("/");
  if (joined === "") return ".";
  const absolute = joined.startsWith("/");
  const out: string[] = [];
  for (const piece of joined.split("/")) {
    if (piece === "" || piece === ".") continue;
    if (piece === "..") {
      if (out.length > 0 && out[out.length - 1] !== "..") out.pop();
      else if (!absolute) out.push("..");
    } else out.push(piece);
  }
  const body = out.join("/");
  const trailing = joined.endsWith("/") && body !== "" ? "/" : "";
  return (absolute ? "/" : "") + (body || (absolute ? "" : ".")) + trailing;
}

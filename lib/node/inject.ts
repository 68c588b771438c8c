/**
 * What npm/build.ts gives esbuild's `inject`: `denoOnNode` under the name
 * `Deno`, so that every free `Deno` of the bundle is bound to it.
 *
 * @module
 */
export { denoOnNode as Deno } from "./deno.ts";

// Wording of operating-system errors inside our one-line messages.

/**
 * The OS's words for an I/O error, first letter lowered to continue a
 * sentence: "no space left on device (os error 28)".
 */
export function ioReason(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.charAt(0).toLowerCase() + message.slice(1);
}

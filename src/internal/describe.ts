/**
 * A thrown or failed value in words, for log lines and error reasons, never throwing itself: what a caller's
 * callback throws may be anything (`Object.create(null)`, an object whose `toString` throws).
 */

/** An `Error`'s message (its name when the message is empty); anything else as `String` gives it. */
export const describe = (value: unknown): string => {
  try {
    if (value instanceof Error) return value.message === "" ? value.name : value.message
    return String(value)
  } catch {
    return "a value that cannot be shown as text"
  }
}

/**
 * Control characters (line breaks among them, and the line and paragraph separators) as `\uXXXX` escapes: text a
 * peer chose (a broker's reason string or Server Reference, a request's topic) stays on its line of a log.
 */
export const escapeControls = (text: string): string =>
  text.replace(
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`
  )

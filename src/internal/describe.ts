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

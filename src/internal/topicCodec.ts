/**
 * The payload codecs of typed topics: a payload `Schema` turned into a schema from bytes.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as SchemaGetter from "effect/SchemaGetter"
import * as SchemaIssue from "effect/SchemaIssue"

/** How a payload is written as bytes. */
export type Codec = "json" | "text" | "bytes"

const fatalDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })
const encoder = new TextEncoder()

/** UTF-8 text from bytes: malformed UTF-8 is an issue, never replaced by U+FFFD. */
export const Utf8: Schema.Codec<string, Uint8Array> = Schema.Uint8Array.pipe(
  Schema.decodeTo(Schema.String, {
    decode: SchemaGetter.transformEffect((bytes: Uint8Array, options) => {
      try {
        return Effect.succeed(fatalDecoder.decode(bytes))
      } catch {
        return Effect.fail(new SchemaIssue.InvalidValue({ message: "the payload is not valid UTF-8" }, bytes, options))
      }
    }),
    encode: SchemaGetter.transform((text: string) => encoder.encode(text))
  })
)

/**
 * The schema from the payload bytes to the decoded value: JSON text, UTF-8 text, or the schema itself when it
 * already decodes from bytes.
 */
export const payloadSchema = <S extends Schema.Top>(
  schema: S,
  codec: Codec
): Schema.Codec<S["Type"], Uint8Array, S["DecodingServices"], S["EncodingServices"]> => {
  const any = schema as unknown as Schema.Codec<unknown, unknown, unknown, unknown>
  switch (codec) {
    case "bytes":
      return any as never
    case "text":
      return Utf8.pipe(Schema.decodeTo(any as Schema.Codec<unknown, string, unknown, unknown>)) as never
    case "json":
      return Utf8.pipe(Schema.decodeTo(Schema.fromJsonString(any))) as never
  }
}

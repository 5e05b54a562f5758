/**
 * Test certificates made with `openssl` in a temporary directory: a certificate authority, a server certificate
 * for `localhost`, a client certificate, and a second, unrelated authority with its own client certificate.
 *
 * EC P-256 keys keep generation fast (a few tens of milliseconds per key). The files live until `dispose()`.
 *
 * ```ts
 * const certs = makeCerts()
 * // certs.ca.cert, certs.server.cert, certs.server.key, certs.client.cert, certs.client.key, ...
 * certs.dispose()
 * ```
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

const INSTALL_HINT = "install it with `apt-get install -y openssl` (Debian)"

/** A certificate and its private key, as file paths (PEM). */
export interface KeyPair {
  readonly cert: string
  readonly key: string
}

export interface Certs {
  readonly dir: string
  /** The authority that signed `server` and `client`. */
  readonly ca: KeyPair
  /** The broker's certificate: subject alternative name `DNS:localhost` only (so `127.0.0.1` does not match). */
  readonly server: KeyPair
  /** A client certificate signed by `ca`. */
  readonly client: KeyPair
  /** The same client certificate's key, encrypted with {@link clientKeyPassphrase}. */
  readonly clientEncryptedKey: string
  readonly clientKeyPassphrase: string
  /** An unrelated authority: it did not sign the server certificate. */
  readonly otherCa: KeyPair
  /** A client certificate signed by `otherCa`, which the broker does not trust. */
  readonly otherClient: KeyPair
  /** Reads a file made here as text. */
  readonly read: (path: string) => string
  dispose(): void
}

const openssl = (args: ReadonlyArray<string>, cwd: string): void => {
  try {
    execFileSync("openssl", args, { cwd, stdio: "pipe" })
  } catch (error) {
    const e = error as NodeJS.ErrnoException & { stderr?: Buffer }
    if (e.code === "ENOENT") throw new Error(`openssl is required to make the test certificates: ${INSTALL_HINT}`)
    throw new Error(`openssl ${args.join(" ")} failed: ${e.stderr?.toString() ?? e.message}`)
  }
}

const newKey = (dir: string, name: string): string => {
  openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", `${name}.key`], dir)
  return Path.join(dir, `${name}.key`)
}

const makeCa = (dir: string, name: string, subject: string): KeyPair => {
  const key = newKey(dir, name)
  openssl([
    "req",
    "-x509",
    "-new",
    "-key",
    key,
    "-sha256",
    "-days",
    "2",
    "-subj",
    `/CN=${subject}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
    "-out",
    `${name}.crt`
  ], dir)
  return { cert: Path.join(dir, `${name}.crt`), key }
}

const makeLeaf = (dir: string, name: string, subject: string, issuer: KeyPair, extensions: string): KeyPair => {
  const key = newKey(dir, name)
  openssl(["req", "-new", "-key", key, "-subj", `/CN=${subject}`, "-out", `${name}.csr`], dir)
  Fs.writeFileSync(Path.join(dir, `${name}.ext`), extensions)
  openssl([
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    issuer.cert,
    "-CAkey",
    issuer.key,
    "-CAcreateserial",
    "-sha256",
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
    "-out",
    `${name}.crt`
  ], dir)
  return { cert: Path.join(dir, `${name}.crt`), key }
}

const serverExtensions = [
  "basicConstraints=critical,CA:FALSE",
  "keyUsage=critical,digitalSignature",
  "extendedKeyUsage=serverAuth",
  "subjectAltName=DNS:localhost",
  ""
].join("\n")

const clientExtensions = [
  "basicConstraints=critical,CA:FALSE",
  "keyUsage=critical,digitalSignature",
  "extendedKeyUsage=clientAuth",
  ""
].join("\n")

/** Makes a fresh set of certificates in a new temporary directory. Throws the install hint without openssl. */
export const makeCerts = (): Certs => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-mqtt-certs-"))
  try {
    const ca = makeCa(dir, "ca", "effect-mqtt test CA")
    const server = makeLeaf(dir, "server", "localhost", ca, serverExtensions)
    const client = makeLeaf(dir, "client", "effect-mqtt test client", ca, clientExtensions)
    const clientKeyPassphrase = "client-key-passphrase"
    const clientEncryptedKey = Path.join(dir, "client-encrypted.key")
    openssl([
      "pkey",
      "-in",
      client.key,
      "-aes-256-cbc",
      "-passout",
      `pass:${clientKeyPassphrase}`,
      "-out",
      clientEncryptedKey
    ], dir)
    const otherCa = makeCa(dir, "other-ca", "unrelated test CA")
    const otherClient = makeLeaf(dir, "other-client", "untrusted test client", otherCa, clientExtensions)
    // mosquitto may run as another user when not root; the keys are throwaway test keys
    for (const file of Fs.readdirSync(dir)) Fs.chmodSync(Path.join(dir, file), 0o644)
    return {
      dir,
      ca,
      server,
      client,
      clientEncryptedKey,
      clientKeyPassphrase,
      otherCa,
      otherClient,
      read: (path) => Fs.readFileSync(path, "utf8"),
      dispose: () => Fs.rmSync(dir, { recursive: true, force: true })
    }
  } catch (error) {
    Fs.rmSync(dir, { recursive: true, force: true })
    throw error
  }
}

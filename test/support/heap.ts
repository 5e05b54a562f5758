/**
 * The heap's objects after two full collections, for tests that check that work leaves nothing behind. V8's
 * collector is run without `--expose-gc` on the command line; the code spaces are left out, where the JIT goes on
 * compiling and recompiling long after a warm-up.
 */
import * as V8 from "node:v8"
import * as Vm from "node:vm"

let gc: (() => void) | undefined

export const heapUsed = (): number => {
  if (gc === undefined) {
    V8.setFlagsFromString("--expose-gc")
    gc = Vm.runInNewContext("gc") as () => void
  }
  gc()
  gc()
  return V8.getHeapSpaceStatistics().filter((space) => !space.space_name.startsWith("code"))
    .reduce((sum, space) => sum + space.space_used_size, 0)
}

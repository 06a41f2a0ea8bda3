/**
 * The one place where walship's code differs between Deno and Bun: calling
 * libc through FFI (`Deno.dlopen` / `bun:ffi`) for byte-range locks. Used by
 * the pin (src/capture/pin.ts) to take part in SQLite's own lock protocol.
 * Linux only: open-file-description locks (F_OFD_*) are Linux's.
 *
 * @module
 */

/** Lock types of `struct flock`. */
export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const O_RDONLY = 0;
const O_RDWR = 2;
const O_CLOEXEC = 0o2000000;
const EAGAIN = 11;
const EACCES = 13;

/** Byte-range locks on files this process opens itself. */
export interface FileLocks {
  /**
   * Opens `path` read-only, or read-write with `write` (an exclusive lock
   * needs a descriptor open for writing); returns the fd, or -1 with the errno.
   */
  open(path: string, write?: boolean): { fd: number; errno: number };
  close(fd: number): void;
  /**
   * Takes (F_RDLCK/F_WRLCK) or drops (F_UNLCK) a lock on [start, start+len)
   * without waiting. True on success, false when another holder conflicts.
   */
  setLock(fd: number, type: number, start: number, len: number): boolean;
  /** The type of a lock another holder has that conflicts with `type` there, or F_UNLCK. */
  testLock(fd: number, type: number, start: number, len: number): number;
}

// struct flock on Linux x86_64 and aarch64: short l_type; short l_whence;
// off_t l_start (at 8); off_t l_len (at 16); pid_t l_pid (at 24); 32 bytes.
function flock(type: number, start: number, len: number): Uint8Array {
  const buf = new Uint8Array(32);
  const v = new DataView(buf.buffer);
  v.setInt16(0, type, true);
  v.setInt16(2, 0, true); // SEEK_SET
  v.setBigInt64(8, BigInt(start), true);
  v.setBigInt64(16, BigInt(len), true);
  return buf;
}

interface RawLibc {
  open(path: Uint8Array, flags: number): number;
  close(fd: number): number;
  fcntl(fd: number, cmd: number, arg: Uint8Array): number;
  errno(): number;
}

function makeLocks(libc: RawLibc): FileLocks {
  return {
    open(path, write = false) {
      const fd = libc.open(new TextEncoder().encode(path + "\0"), (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
      return { fd, errno: fd < 0 ? libc.errno() : 0 };
    },
    close(fd) {
      libc.close(fd);
    },
    setLock(fd, type, start, len) {
      if (libc.fcntl(fd, F_OFD_SETLK, flock(type, start, len)) === 0) return true;
      const errno = libc.errno();
      if (errno === EAGAIN || errno === EACCES) return false;
      throw new Error(`fcntl(F_OFD_SETLK) failed with errno ${errno}`);
    },
    testLock(fd, type, start, len) {
      const buf = flock(type, start, len);
      if (libc.fcntl(fd, F_OFD_GETLK, buf) !== 0) throw new Error(`fcntl(F_OFD_GETLK) failed with errno ${libc.errno()}`);
      return new DataView(buf.buffer).getInt16(0, true);
    },
  };
}

// deno-lint-ignore no-explicit-any
const g = globalThis as any;

/** Which runtime runs walship. */
export const runtime: "deno" | "bun" | "other" = g.Bun ? "bun" : g.Deno ? "deno" : "other";

let cached: FileLocks | string | undefined;

/**
 * libc's locks through FFI, or the reason they are unavailable (not Linux,
 * FFI denied, no libc).
 */
export async function loadFileLocks(): Promise<FileLocks | string> {
  if (cached !== undefined) return cached;
  if (process.platform !== "linux") return (cached = `pinning needs Linux (this is ${process.platform})`);
  try {
    cached = runtime === "deno" ? denoLibc() : runtime === "bun" ? await bunLibc() : "FFI needs Deno or Bun";
  } catch (err) {
    cached = `FFI is unavailable: ${(err as Error).message.split("\n")[0]}`;
  }
  return cached;
}

function denoLibc(): FileLocks {
  const lib = g.Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    fcntl: { parameters: ["i32", "i32", "buffer"], result: "i32" },
    __errno_location: { parameters: [], result: "pointer" },
  });
  const s = lib.symbols;
  return makeLocks({
    open: (p, f) => s.open(p, f),
    close: (fd) => s.close(fd),
    fcntl: (fd, cmd, arg) => s.fcntl(fd, cmd, arg),
    errno: () => new g.Deno.UnsafePointerView(s.__errno_location()).getInt32(0),
  });
}

async function bunLibc(): Promise<FileLocks> {
  const specifier = "bun:ffi";
  const ffi = await import(specifier);
  const lib = ffi.dlopen("libc.so.6", {
    open: { args: ["ptr", "i32"], returns: "i32" },
    close: { args: ["i32"], returns: "i32" },
    fcntl: { args: ["i32", "i32", "ptr"], returns: "i32" },
    __errno_location: { args: [], returns: "ptr" },
  });
  const s = lib.symbols;
  return makeLocks({
    open: (p, f) => s.open(ffi.ptr(p), f),
    close: (fd) => s.close(fd),
    fcntl: (fd, cmd, arg) => s.fcntl(fd, cmd, ffi.ptr(arg)),
    errno: () => ffi.read.i32(s.__errno_location(), 0),
  });
}

//! WASI preview 1 as the Redpanda broker gives it to a transform
//! (`src/v/wasm/wasi.cc`), and nothing more: the same 44 functions, so a
//! module that links on Redpanda links here and one that does not is
//! refused at upload.
//!
//! What works: arguments (the plugin's name), the environment (the user's
//! variables plus `REDPANDA_INPUT_TOPIC` / `REDPANDA_OUTPUT_TOPIC_<i>`),
//! clocks (the realtime clock reads the current record's timestamp; the
//! monotonic ones advance 1 ms per read so busy-wait loops end), `fd_write`
//! on fd 1 and 2 (to the host's log, within the instance's log budget),
//! `poll_oneoff` for clock subscriptions only (returns at once: nobody
//! sleeps in a transform), `random_get` (the broker fills 9s, and so does
//! this: a transform must not depend on randomness), `sched_yield` and
//! `proc_exit` (ends the instance). Everything else is `ENOSYS`, and
//! `fd_prestat_get` says `EBADF` past fd 2 (wasi-libc probes preopens
//! with it).

use wasmtime::{Caller, Engine, FuncType, Linker, Val, ValType};

use super::instance::{RpState, guest_memory};

/// The module name of WASI preview 1 imports.
pub(crate) const MODULE: &str = "wasi_snapshot_preview1";

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;

/// Functions that only answer `ENOSYS`, with their parameter types
/// (`i`: i32, `I`: i64); each returns an i32 errno.
const NOSYS: &[(&str, &str)] = &[
    ("fd_advise", "iIIi"),
    ("fd_allocate", "iII"),
    ("fd_close", "i"),
    ("fd_datasync", "i"),
    ("fd_fdstat_get", "ii"),
    ("fd_fdstat_set_flags", "ii"),
    ("fd_filestat_get", "ii"),
    ("fd_filestat_set_size", "iI"),
    ("fd_filestat_set_times", "iIIi"),
    ("fd_pread", "iiiIi"),
    ("fd_prestat_dir_name", "iii"),
    ("fd_pwrite", "iiiIi"),
    ("fd_read", "iiii"),
    ("fd_readdir", "iiiIi"),
    ("fd_renumber", "ii"),
    ("fd_seek", "iIii"),
    ("fd_sync", "i"),
    ("fd_tell", "ii"),
    ("path_create_directory", "iii"),
    ("path_filestat_get", "iiiii"),
    ("path_filestat_set_times", "iiiiIIi"),
    ("path_link", "iiiiiii"),
    ("path_open", "iiiiiIIii"),
    ("path_readlink", "iiiiii"),
    ("path_remove_directory", "iii"),
    ("path_rename", "iiiiii"),
    ("path_symlink", "iiiii"),
    ("path_unlink_file", "iii"),
    ("sock_accept", "iii"),
    ("sock_recv", "iiiiii"),
    ("sock_send", "iiiii"),
    ("sock_shutdown", "ii"),
];

/// Functions with a real implementation here.
const IMPLEMENTED: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_prestat_get",
    "fd_write",
    "poll_oneoff",
    "proc_exit",
    "sched_yield",
    "random_get",
];

/// Whether the broker (and so kwasm) provides `wasi_snapshot_preview1.name`.
pub(crate) fn provides(name: &str) -> bool {
    IMPLEMENTED.contains(&name) || NOSYS.iter().any(|(n, _)| *n == name)
}

/// Redpanda's clock resolution: record timestamps are milliseconds.
const RESOLUTION_NS: u64 = 1_000_000;

/// A guest called `proc_exit`: the instance ends with this error.
#[derive(Debug, thiserror::Error)]
#[error("the transform exited with code {0} (proc_exit)")]
pub(crate) struct Exited(pub(crate) i32);

pub(crate) fn add_to_linker(engine: &Engine, linker: &mut Linker<RpState>) -> wasmtime::Result<()> {
    for (name, params) in NOSYS {
        let params = params
            .chars()
            .map(|c| if c == 'I' { ValType::I64 } else { ValType::I32 });
        let ty = FuncType::new(engine, params, [ValType::I32]);
        linker.func_new(MODULE, name, ty, |_, _, results: &mut [Val]| {
            results[0] = Val::I32(ENOSYS);
            Ok(())
        })?;
    }
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |mut c: Caller<'_, RpState>, count: u32, size: u32| {
            let (n, bytes) = sizes(&c.data().args);
            write_u32s(&mut c, &[(count, n), (size, bytes)])
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_get",
        |mut c: Caller<'_, RpState>, ptrs: u32, buf: u32| {
            let strings = c.data().args.clone();
            write_strings(&mut c, &strings, ptrs, buf)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut c: Caller<'_, RpState>, count: u32, size: u32| {
            let (n, bytes) = sizes(&c.data().env);
            write_u32s(&mut c, &[(count, n), (size, bytes)])
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |mut c: Caller<'_, RpState>, ptrs: u32, buf: u32| {
            let strings = c.data().env.clone();
            write_strings(&mut c, &strings, ptrs, buf)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut c: Caller<'_, RpState>, id: u32, out: u32| {
            if id > 3 {
                return Ok(EINVAL);
            }
            write(&mut c, out, &RESOLUTION_NS.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut c: Caller<'_, RpState>, id: u32, _precision: u64, out: u32| {
            let now_ns = match id {
                0 => (c.data().walltime_ms.max(0) as u64).saturating_mul(1_000_000),
                1..=3 => {
                    let state = c.data_mut();
                    let now = state.monotonic_ns;
                    state.monotonic_ns += RESOLUTION_NS;
                    now
                }
                _ => return Ok(EINVAL),
            };
            write(&mut c, out, &now_ns.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_get",
        |_: Caller<'_, RpState>, fd: u32, _out: u32| Ok(if fd <= 2 { ENOSYS } else { EBADF }),
    )?;
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut c: Caller<'_, RpState>, fd: u32, iovs: u32, iovs_len: u32, written: u32| {
            if fd != 1 && fd != 2 {
                return Ok(ENOSYS);
            }
            let memory = guest_memory(&mut c)?;
            let data = memory.data(&c);
            let mut text = Vec::new();
            for i in 0..iovs_len as usize {
                let at = iovs as usize + 8 * i;
                let (buf, len) = (read_u32(data, at)?, read_u32(data, at + 4)?);
                text.extend_from_slice(slice(data, buf as usize, len as usize)?);
            }
            c.data().output.write_bytes(&text);
            write_u32s(&mut c, &[(written, text.len() as u32)])
        },
    )?;
    linker.func_wrap(
        MODULE,
        "poll_oneoff",
        |mut c: Caller<'_, RpState>, subs: u32, events: u32, n: u32, nevents: u32| {
            poll_oneoff(&mut c, subs, events, n, nevents)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Caller<'_, RpState>, code: i32| -> wasmtime::Result<()> { Err(Exited(code).into()) },
    )?;
    linker.func_wrap(MODULE, "sched_yield", |_: Caller<'_, RpState>| SUCCESS)?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut c: Caller<'_, RpState>, buf: u32, len: u32| {
            let memory = guest_memory(&mut c)?;
            let data = memory.data_mut(&mut c);
            slice_mut(data, buf as usize, len as usize)?.fill(9);
            Ok(SUCCESS)
        },
    )?;
    Ok(())
}

/// Count and total size (each string NUL-terminated) of a string list.
fn sizes(strings: &[String]) -> (u32, u32) {
    let bytes: usize = strings.iter().map(|s| s.len() + 1).sum();
    (strings.len() as u32, bytes as u32)
}

/// Writes `strings` NUL-terminated from `buf`, and a pointer to each at
/// `ptrs` (the layout of `args_get` / `environ_get`).
fn write_strings(
    c: &mut Caller<'_, RpState>,
    strings: &[String],
    ptrs: u32,
    buf: u32,
) -> wasmtime::Result<i32> {
    let memory = guest_memory(c)?;
    let data = memory.data_mut(c);
    let mut at = buf as usize;
    for (i, s) in strings.iter().enumerate() {
        slice_mut(data, ptrs as usize + 4 * i, 4)?.copy_from_slice(&(at as u32).to_le_bytes());
        slice_mut(data, at, s.len())?.copy_from_slice(s.as_bytes());
        slice_mut(data, at + s.len(), 1)?[0] = 0;
        at += s.len() + 1;
    }
    Ok(SUCCESS)
}

/// Clock subscriptions are answered at once; fd ones get `ENOSYS` in their
/// event; another tag fails the call, as on the broker. A subscription is
/// 48 bytes (userdata u64, tag u8 at 8), an event 32 (userdata u64, errno
/// u16 at 8, type u8 at 10).
fn poll_oneoff(
    c: &mut Caller<'_, RpState>,
    subs: u32,
    events: u32,
    n: u32,
    nevents: u32,
) -> wasmtime::Result<i32> {
    const CLOCK: u8 = 0;
    const FD_READ: u8 = 1;
    const FD_WRITE: u8 = 2;
    let memory = guest_memory(c)?;
    let data = memory.data_mut(c);
    for i in 0..n as usize {
        let sub = subs as usize + 48 * i;
        let userdata: [u8; 8] = slice(data, sub, 8)?.try_into()?;
        let tag = slice(data, sub + 8, 1)?[0];
        let errno: u16 = match tag {
            CLOCK => SUCCESS as u16,
            FD_READ | FD_WRITE => ENOSYS as u16,
            _ => return Ok(ENOSYS),
        };
        let event = slice_mut(data, events as usize + 32 * i, 32)?;
        event.fill(0);
        event[..8].copy_from_slice(&userdata);
        event[8..10].copy_from_slice(&errno.to_le_bytes());
        event[10] = tag;
    }
    slice_mut(data, nevents as usize, 4)?.copy_from_slice(&n.to_le_bytes());
    Ok(SUCCESS)
}

fn write(c: &mut Caller<'_, RpState>, at: u32, bytes: &[u8]) -> wasmtime::Result<i32> {
    let memory = guest_memory(c)?;
    slice_mut(memory.data_mut(c), at as usize, bytes.len())?.copy_from_slice(bytes);
    Ok(SUCCESS)
}

fn write_u32s(c: &mut Caller<'_, RpState>, values: &[(u32, u32)]) -> wasmtime::Result<i32> {
    for &(at, v) in values {
        write(c, at, &v.to_le_bytes())?;
    }
    Ok(SUCCESS)
}

fn read_u32(data: &[u8], at: usize) -> wasmtime::Result<u32> {
    Ok(u32::from_le_bytes(slice(data, at, 4)?.try_into()?))
}

/// `data[at..at + len]`, or a trap naming the bad pointer.
pub(crate) fn slice(data: &[u8], at: usize, len: usize) -> wasmtime::Result<&[u8]> {
    data.get(at..at.saturating_add(len))
        .ok_or_else(|| out_of_bounds(at, len, data.len()))
}

/// `&mut data[at..at + len]`, or a trap naming the bad pointer.
pub(crate) fn slice_mut(data: &mut [u8], at: usize, len: usize) -> wasmtime::Result<&mut [u8]> {
    let size = data.len();
    data.get_mut(at..at.saturating_add(len))
        .ok_or_else(|| out_of_bounds(at, len, size))
}

fn out_of_bounds(at: usize, len: usize, size: usize) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "a host call was given {len} bytes at {at:#x}, outside the guest's {size}-byte memory"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_provides_exactly_the_brokers_44_functions() {
        assert_eq!(NOSYS.len() + IMPLEMENTED.len(), 44);
        assert!(provides("fd_write") && provides("path_open"));
        // Not registered by the broker, so not here either.
        assert!(!provides("fd_fdstat_set_rights"));
        assert!(!provides("sock_open"));
    }

    #[test]
    fn string_lists_count_their_nul_bytes() {
        assert_eq!(sizes(&["a=1".into(), "bc=2".into()]), (2, 9));
        assert_eq!(sizes(&[]), (0, 0));
    }
}

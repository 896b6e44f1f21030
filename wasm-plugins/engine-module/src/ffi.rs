//! The exported functions of the module (the ABI is in the crate docs).
//!
//! They carry their export names (`#[no_mangle]`) only on wasm32: a native build of the
//! `rlib` must not define a global `free` or `alloc`, which would replace the C library's.
//! Packed results need 32-bit addresses, so natively `decide` and `last_error` return 0.

use std::alloc::Layout;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{ErrorKind, ModuleError, Registry, ABI_VERSION};

struct State {
    registry: Registry,
    last_error: Option<Box<[u8]>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    registry: Registry::new(),
    last_error: None,
});

/// The global state; a panic (natively caught) leaves it consistent, so poison is ignored.
fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_last_error(e: Option<&ModuleError>) {
    state().last_error = e.map(|e| e.to_json().into_boxed_slice());
}

fn panicked() -> ModuleError {
    ModuleError::new(
        ErrorKind::Internal,
        "internal error: the engine module panicked",
    )
}

/// Runs `f`, turning a panic into an `internal` error where the target can unwind.
fn guarded<T>(f: impl FnOnce() -> Result<T, ModuleError>) -> Result<T, ModuleError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(panicked()))
}

/// Hands `buf` to the caller as `ptr << 32 | len`; 0 when it does not fit 32-bit addresses
/// (only natively), in which case it is freed here.
fn pack(buf: Box<[u8]>) -> u64 {
    let len = buf.len();
    let ptr: *mut u8 = Box::into_raw(buf).cast();
    let (Ok(p), Ok(l)) = (u32::try_from(ptr.addr()), u32::try_from(len)) else {
        // SAFETY: `ptr` and `len` are the box released just above, not yet handed out.
        #[allow(unsafe_code)]
        unsafe {
            free(ptr, len)
        };
        return 0;
    };
    (u64::from(p) << 32) | u64::from(l)
}

/// The request bytes at `ptr`, or an error when the range is impossible or (on wasm32) lies
/// outside the module's memory, so a bad buffer is an error rather than a trap.
///
/// # Safety
///
/// A range inside the memory must be readable for `'a` and not written during the call.
#[allow(unsafe_code)]
unsafe fn request<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], ModuleError> {
    if len == 0 {
        return Ok(&[]);
    }
    let bad = || {
        ModuleError::new(
            ErrorKind::InvalidRequest,
            format!(
                "the request buffer ({:#x}, {len} bytes) is not in the module's memory",
                ptr.addr()
            ),
        )
    };
    if ptr.is_null() || len > isize::MAX as usize || ptr.addr().checked_add(len).is_none() {
        return Err(bad());
    }
    #[cfg(target_arch = "wasm32")]
    if ptr.addr() + len > core::arch::wasm32::memory_size::<0>() * 65536 {
        return Err(bad());
    }
    // SAFETY: the range is non-null, in bounds and no larger than `isize::MAX`; the caller
    // guarantees it is readable and unchanged during the call.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `1`: the version of this ABI.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[allow(unsafe_code)] // `no_mangle`: the export name.
pub extern "C" fn abi_version() -> i32 {
    ABI_VERSION
}

/// A buffer of `len` bytes for the caller to write a request into, or null when memory is
/// exhausted. Release it with [`free`] with the same `len`.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[allow(unsafe_code)] // `no_mangle`, and the allocator call below.
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    let Ok(layout) = Layout::array::<u8>(len) else {
        return std::ptr::null_mut();
    };
    if len == 0 {
        return NonNull::<u8>::dangling().as_ptr();
    }
    // SAFETY: `layout` has a non-zero size (checked above); a null result is passed on.
    unsafe { std::alloc::alloc(layout) }
}

/// Releases a buffer from [`alloc`] or one the module returned packed. Null or `len == 0` is
/// a no-op.
///
/// # Safety
///
/// `ptr` must be a buffer of exactly `len` bytes from [`alloc`], or the address and length of
/// a packed result, not released before.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[allow(unsafe_code)] // `no_mangle`, and the deallocation below.
pub unsafe extern "C" fn free(ptr: *mut u8, len: usize) {
    if ptr.is_null() || len == 0 {
        return;
    }
    let Ok(layout) = Layout::array::<u8>(len) else {
        return;
    };
    // SAFETY: the caller guarantees `ptr` was allocated with this layout: `alloc(len)` uses it,
    // and a packed result is a `Box<[u8]>` of `len` bytes, whose layout is the same.
    unsafe { std::alloc::dealloc(ptr, layout) }
}

/// Loads the policy set of the `load` request in `ptr[..len]`: a handle `> 0`, or a negative
/// [`ErrorKind::code`] with the error in [`last_error`].
///
/// # Safety
///
/// `ptr[..len]` must be readable and unchanged during the call (a range outside the module's
/// memory is reported as an error on wasm32).
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[allow(unsafe_code)] // `no_mangle`, and reading the caller's buffer.
pub unsafe extern "C" fn load(ptr: *const u8, len: usize) -> i32 {
    set_last_error(None);
    let result = guarded(|| {
        // SAFETY: forwarded from this function's contract.
        let input = unsafe { request(ptr, len) }?;
        let engine = crate::build(input)?;
        state().registry.insert(engine)
    });
    match result {
        Ok(handle) => handle,
        Err(e) => {
            set_last_error(Some(&e));
            e.kind.code()
        }
    }
}

/// Decides the `decide` request in `ptr[..len]` with the policy set under `handle`: packed
/// Decision JSON, or packed error JSON (also kept for [`last_error`]). Free the result.
///
/// # Safety
///
/// As for [`load`].
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[allow(unsafe_code)] // `no_mangle`, and reading the caller's buffer.
pub unsafe extern "C" fn decide(handle: i32, ptr: *const u8, len: usize) -> u64 {
    set_last_error(None);
    let result = guarded(|| {
        // SAFETY: forwarded from this function's contract.
        let input = unsafe { request(ptr, len) }?;
        let engine = state().registry.get(handle)?;
        let decision = crate::decide(&engine, input)?;
        serialized(&decision, "the decision")
    });
    packed_result(result)
}

/// Normalizes the `normalize` request in `ptr[..len]`: packed `{"events", "state"}` JSON, or
/// packed error JSON (also kept for [`last_error`]). Free the result.
///
/// # Safety
///
/// As for [`load`].
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[allow(unsafe_code)] // `no_mangle`, and reading the caller's buffer.
pub unsafe extern "C" fn normalize(ptr: *const u8, len: usize) -> u64 {
    set_last_error(None);
    let result = guarded(|| {
        // SAFETY: forwarded from this function's contract.
        let input = unsafe { request(ptr, len) }?;
        let out = crate::normalize(input)?;
        serialized(&out, "the events")
    });
    packed_result(result)
}

/// The normalizers, packed JSON `[{"name", "reads"}]`. Free the result.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[allow(unsafe_code)] // `no_mangle`: the export name.
pub extern "C" fn normalizers() -> u64 {
    packed_result(guarded(|| serialized(&crate::normalizers(), "the list")))
}

/// `value` as JSON, or an `internal` error naming `what`.
fn serialized<T: serde::Serialize>(value: &T, what: &str) -> Result<Vec<u8>, ModuleError> {
    serde_json::to_vec(value).map_err(|e| {
        ModuleError::new(
            ErrorKind::Internal,
            format!("{what} could not be serialized: {e}"),
        )
    })
}

/// The result's JSON packed, or the error's (also kept for [`last_error`]).
fn packed_result(result: Result<Vec<u8>, ModuleError>) -> u64 {
    let out = match result {
        Ok(json) => json,
        Err(e) => {
            set_last_error(Some(&e));
            e.to_json()
        }
    };
    pack(out.into_boxed_slice())
}

/// Drops the policy set under `handle`: `0`, or a negative [`ErrorKind::code`] with the error
/// in [`last_error`].
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[allow(unsafe_code)] // `no_mangle`: the export name.
pub extern "C" fn unload(handle: i32) -> i32 {
    set_last_error(None);
    match guarded(|| state().registry.unload(handle)) {
        Ok(()) => 0,
        Err(e) => {
            set_last_error(Some(&e));
            e.kind.code()
        }
    }
}

/// The error JSON of the latest [`load`], [`decide`], [`normalize`] or [`unload`] call, packed (a copy: free
/// it), or `0` when that call succeeded.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[allow(unsafe_code)] // `no_mangle`: the export name.
pub extern "C" fn last_error() -> u64 {
    let copy = state().last_error.clone();
    copy.map_or(0, pack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_and_free() {
        let p = alloc(16);
        assert!(!p.is_null());
        // SAFETY: `p` is 16 bytes from `alloc`.
        #[allow(unsafe_code)]
        unsafe {
            free(p, 16)
        };
        let z = alloc(0);
        assert!(!z.is_null());
        // SAFETY: a no-op for zero lengths.
        #[allow(unsafe_code)]
        unsafe {
            free(z, 0)
        };
        assert!(alloc(usize::MAX).is_null());
    }

    #[test]
    fn errors_without_a_buffer() {
        // SAFETY: a null pointer is rejected before any read.
        #[allow(unsafe_code)]
        let code = unsafe { load(std::ptr::null(), 5) };
        assert_eq!(code, ErrorKind::InvalidRequest.code());
        // SAFETY: an empty request reads nothing.
        #[allow(unsafe_code)]
        let code = unsafe { load(std::ptr::null(), 0) };
        assert_eq!(code, ErrorKind::InvalidRequest.code());
        assert_eq!(unload(12345), ErrorKind::UnknownHandle.code());
        assert_eq!(abi_version(), 2);
    }
}

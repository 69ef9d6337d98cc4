//! Compiled into the `tollgate` binary only (`main.rs` includes this file; the library and
//! the test binaries do not): holds tollgate's signals before `main` runs, from the C
//! runtime's initialisers, so that none arriving during start-up can take its default action
//! (terminate). `signals::release` lets them through once the handlers are installed.
#![allow(unsafe_code)]

/// An entry in the executable's `.init_array`, which the C runtime calls before `main`.
// SAFETY: `.init_array` holds pointers to functions the loader calls with no arguments
// that matter (extra C arguments are ignored by an `extern "C" fn()`); `hold_signals` only
// calls pthread_sigmask, which needs nothing initialised.
#[used]
#[unsafe(link_section = ".init_array")]
static HOLD_SIGNALS: extern "C" fn() = hold_signals;

extern "C" fn hold_signals() {
    // Nothing can be reported this early, and there is nothing to do about a failure: the
    // signals then keep their default action, as in any program.
    let _ = tollgate::sys::signals::hold();
}

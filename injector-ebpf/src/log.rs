//! Log records for rare events only: a program meeting a state it should
//! not meet in steady operation (a connect program running in the moment
//! between its attachment and the daemon publishing its target). Never on
//! a per-packet or per-syscall path that works as intended: each record
//! costs a ring-buffer reservation.
//!
//! The records go to aya-log's `AYA_LOGS` ring buffer; the daemon reads it
//! and hands them to its tracing subscriber under the target `injector`
//! (`--log info,injector=debug` shows the debug ones), and writes the level
//! it shows into the object's `AYA_LOG_LEVEL` before loading.
//!
//! The packet programs do not log: a single aya-log call in them, in the
//! rule loop's callback or at the program's end, made every interface's
//! first fault 50 to 170 ms slower to verify, at any log level (measured
//! on the 6.18 host: 85 ms without, 135 ms and 260 ms with).

/// aya-log's macros take a context they do not use (yet); this one stands
/// in where none is at hand.
pub const NO_CTX: () = ();

//! The sans-IO FTP core: bytes and events in, actions out. No sockets, no tokio, no clocks
//! here, so every rule can be tested with tables and fuzzed.
//!
//! - [`line`]: line framing with a hard length limit and Telnet IAC handling;
//! - [`command`]: client command lines (`VERB arg`);
//! - [`reply`]: server replies, including multi-line ones;
//! - [`address`]: the data-address forms: 227, 229, PORT, EPRT, EPSV arguments;
//! - [`scrub`]: removes the origin's addresses from reply text.
//! - [`session`]: one control connection as a state machine over all of the above.
pub mod address;
pub mod command;
pub mod line;
pub mod reply;
pub mod scrub;
pub mod session;

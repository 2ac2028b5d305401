//! Protection policy decided in userspace. [`bans`]: login-failure bans (the failure
//! counters, the ban list shared by every service, and the sink that mirrors it into
//! the kernel).
pub mod bans;
mod expiring;

//! The SYN-flood figures: unsolicited SYNs dropped per second (ftp-guard's kernel path vs
//! an nftables `netdev ingress` rule on the same interface), and legitimate sessions per
//! second while spoofed SYNs hit port 21, as a share of the unloaded rate. The flood comes
//! from the attacker namespace ([`crate::env::AttackerLink`]), bounded in time, and stops
//! (joined) before a run returns, on error too.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use ftp_guard_common::Counter;
use ftp_guard_testbed::{
    flood::{FloodReport, SynFlood},
    netns::{GATEWAY, GATEWAY_PUBLIC_IF},
};
use serde_json::json;

use super::{Metric, Sample, Settings, control::session_round, cpu_window, json_map};
use crate::{
    env::{ATTACKER, AttackerLink, Env},
    scenarios::{Active, Carrier, DATA_PORTS, VIP, nft},
};

/// The nftables table holding the baseline's drop rule (netdev family, on the gateway's
/// public interface).
const NFT_FLOOD_TABLE: &str = "ftp_guard_bench_flood";
/// How long the flood runs before sessions are timed: the listen queue fills.
const FLOOD_RAMP: Duration = Duration::from_millis(500);

/// Which unsolicited SYNs a `syn-drop` run sends, and how each side recognises them.
/// The second case (a denied source at the control port) is one more entry once
/// the ACLs exist: sources from the denied prefix, port 21, ftp-guard's ACL counter.
pub struct DropCase {
    pub name: &'static str,
    /// Destination ports, first and last.
    pub dst_ports: (u16, u16),
    /// The nftables match selecting these packets (before `counter … drop`).
    pub nft_match: &'static str,
    /// ftp-guard's counter for the drop.
    pub counter: Counter,
}

/// SYNs to the data range with no lease (nobody is logged in during the run).
pub const DATA_RANGE: DropCase = DropCase {
    name: "data range, no lease",
    dst_ports: (40000, 44999),
    nft_match: "tcp dport 40000-44999",
    counter: Counter::DropNoLease,
};

/// Starts `flood` in the attacker namespace; stopped and joined when dropped.
struct RunningFlood {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<FloodReport>>>,
}

impl RunningFlood {
    fn start(env: &Env, flood: SynFlood) -> RunningFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = env.topo.thread_in_ns(ATTACKER, {
            let stop = stop.clone();
            move || flood.run(&stop)
        });
        RunningFlood {
            stop,
            handle: Some(handle),
        }
    }

    /// Waits for the flood to end (its duration is bounded) and returns what it sent.
    fn join(mut self) -> Result<FloodReport> {
        let handle = self.handle.take().context("flood already joined")?;
        handle
            .join()
            .map_err(|_| anyhow!("the flood thread panicked"))?
    }
}

impl Drop for RunningFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The baseline's drop: an nftables `netdev` table with one counted drop rule at the
/// ingress hook of the gateway's public interface, deleted when dropped.
struct NftDrop<'a>(&'a Env);

impl<'a> NftDrop<'a> {
    fn add(env: &'a Env, case: &DropCase) -> Result<NftDrop<'a>> {
        nft(env.topo.ns_name(GATEWAY), &drop_ruleset(case))?;
        Ok(NftDrop(env))
    }

    fn dropped(&self) -> Result<u64> {
        let out = self.0.topo.run(
            GATEWAY,
            &[
                "nft",
                "list",
                "counter",
                "netdev",
                NFT_FLOOD_TABLE,
                "syn_drops",
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        counter_packets(&text).with_context(|| format!("nft counter: {text}"))
    }
}

impl Drop for NftDrop<'_> {
    fn drop(&mut self) {
        let script = format!("delete table netdev {NFT_FLOOD_TABLE}\n");
        if let Err(e) = nft(self.0.topo.ns_name(GATEWAY), &script) {
            eprintln!("warning: removing the flood drop rule: {e:#}");
        }
    }
}

fn drop_ruleset(case: &DropCase) -> String {
    format!(
        "table netdev {NFT_FLOOD_TABLE} {{\n\
         \tcounter syn_drops {{ }}\n\
         \tchain ingress {{\n\
         \t\ttype filter hook ingress device \"{GATEWAY_PUBLIC_IF}\" priority filter; policy accept;\n\
         \t\tip daddr {VIP} {} tcp flags & (syn | ack) == syn counter name \"syn_drops\" drop\n\
         \t}}\n\
         }}\n",
        case.nft_match
    )
}

/// `packets N` from `nft list counter`.
fn counter_packets(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}

fn flood_to(
    attacker: &AttackerLink,
    dst_ports: (u16, u16),
    rate: Option<u64>,
    secs: f64,
) -> SynFlood {
    SynFlood {
        ifname: attacker.ifname.to_owned(),
        src_mac: attacker.mac,
        dst_mac: attacker.gateway_mac,
        src_net: attacker.spoofed_net,
        src_count: 254,
        dst: VIP,
        dst_ports,
        rate,
        duration: Duration::from_secs_f64(secs),
    }
}

/// `syn-drop`: the flood at full speed for `--flood-seconds`; drops counted by the
/// scenario's own dropper (ftp-guard's counter, or the nftables rule's).
pub(super) fn syn_drop(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let attacker = env.attacker_link()?;
    let case = &DATA_RANGE;
    let nft_drop = match active.gateway {
        None => Some(NftDrop::add(env, case)?),
        Some(_) => None,
    };
    let dropped = || -> Result<u64> {
        match (&nft_drop, active.counters()) {
            (Some(rule), _) => rule.dropped(),
            (None, Some(counters)) => Ok(counters.get(case.counter)),
            (None, None) => Err(anyhow!("this scenario has no kernel path to drop with")),
        }
    };
    let before = dropped()?;
    let flood = flood_to(&attacker, case.dst_ports, None, s.flood_seconds);
    let (report, w) = cpu_window(|| RunningFlood::start(env, flood).join())?;
    let drops = dropped()? - before;
    let mut sample = Sample {
        wall_seconds: w.wall,
        others_cpu_seconds: w.others,
        ..Sample::default()
    };
    sample.set(Metric::SynDropsPerSec, drops as f64 / report.seconds);
    sample.set(Metric::SynDropCpu, w.machine / (drops.max(1) as f64) * 1e9);
    sample.detail = json_map(json!({
        "case": case.name,
        "sent": report.sent,
        "dropped": drops,
        // Every frame sent was dropped: the rate is the generator's, not the dropper's limit.
        "kept_up": drops == report.sent,
        "flood_seconds": report.seconds,
        "machine_cpu_seconds": w.machine,
        "softirq_seconds": w.softirq,
        "dropped_by": if nft_drop.is_some() { "nftables netdev ingress rule" } else { "ftp-guard" },
    }));
    Ok(sample)
}

/// `syn-flood-sessions`: sessions back to back for `--session-seconds` unloaded, then as
/// long again while `--flood-pps` spoofed SYNs hit port 21; the ratio of the two rates.
pub(super) fn sessions_under_flood(env: &Env, active: &Active, s: &Settings) -> Result<Sample> {
    let attacker = env.attacker_link()?;
    let unloaded = session_round(env, active, s)?;
    let flood_secs = FLOOD_RAMP.as_secs_f64() + s.session_seconds + 2.0 * s.stall.as_secs_f64();
    let flood = flood_to(&attacker, (21, 21), Some(s.flood_pps), flood_secs);
    let cookies_before = syncookies_sent(env, active)?;
    let running = RunningFlood::start(env, flood);
    std::thread::sleep(FLOOD_RAMP);
    let loaded = session_round(env, active, s);
    running.stop.store(true, Ordering::SeqCst);
    let report = running.join()?;
    let loaded = loaded?;
    let syncookies_sent = syncookies_sent(env, active)? - cookies_before;
    let mut sample = Sample {
        wall_seconds: unloaded.wall + loaded.wall,
        others_cpu_seconds: unloaded.others + loaded.others,
        ..Sample::default()
    };
    let (rate0, rate1) = (unloaded.rate(), loaded.rate());
    sample.set(Metric::FloodSessionsShare, rate1 / rate0);
    sample.set(Metric::FloodSessionsPerSec, rate1);
    sample.detail = json_map(json!({
        "unloaded": unloaded.to_json(),
        "under_flood": loaded.to_json(),
        "flood_pps_asked": s.flood_pps,
        "flood_sent": report.sent,
        "flood_seconds": report.seconds,
        "syncookies_sent": syncookies_sent,
    }));
    Ok(sample)
}

/// `TcpExtSyncookiesSent` where the flooded listening socket lives: ftp-guard's proxy on
/// the gateway, or the origin's server behind the DNAT.
fn syncookies_sent(env: &Env, active: &Active) -> Result<u64> {
    let role = match active.gateway {
        Some(_) => GATEWAY,
        None => ftp_guard_testbed::netns::ORIGIN,
    };
    let out = env
        .topo
        .run(role, &["nstat", "-asz", "TcpExtSyncookiesSent"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "TcpExtSyncookiesSent").then(|| words.next()?.parse().ok())?
        })
        .with_context(|| format!("nstat: {text}"))
}

/// The `syn-drop` figure's method, for the report.
pub fn syn_drop_method(s: &Settings) -> String {
    format!(
        "A SYN flood generator in its own namespace (`attacker`, a macvlan on the \
         client's link, so its frames reach the gateway's public interface) writes \
         pre-built SYN frames from spoofed sources (192.0.2.1–254) to ports \
         {DATA_PORTS} of the public address through an AF_PACKET socket \
         (sendmmsg, qdisc bypassed) as fast as it can for {} s. Nobody is logged \
         in, so no port is leased. Dropped: ftp-guard's `drop_no_lease` counter \
         (its programs on the public interface as the scenario attaches them); \
         for `kernel-helper` an nftables rule in a `netdev` table at the `ingress` \
         hook of the same interface (`tcp flags & (syn|ack) == syn`, counted, \
         dropped), the earliest point nftables has. Per second of the flood, and \
         machine CPU (all CPUs, the generator included) per drop. Where a dropper \
         drops every frame sent (`kept_up` in the JSON) the rate is the \
         generator's: on veth the receiving side runs on the sending CPU, so the \
         ratio then shows only that both kept up, and CPU per drop is the \
         comparison.",
        s.flood_seconds
    )
}

/// The `syn-flood-sessions` figure's method, for the report.
pub fn sessions_method(s: &Settings) -> String {
    format!(
        "{} client threads run whole sessions (as in `sessions`) for {} s \
         unloaded, then for as long again while the generator (as in `syn-drop`) \
         sends {} spoofed SYN/s to port 21 (started {} ms earlier, so the listen \
         queue is full). Sessions that fail under the flood are counted, not \
         fatal. For ftp-guard the flooded listener is its proxy's socket on the \
         gateway (the kernel's SYN cookies); for `kernel-helper` the SYNs are \
         DNATed to the origin's vsftpd (its kernel's SYN cookies, and a conntrack \
         entry per SYN on the gateway). Value: the rate under the flood as a share \
         of the unloaded rate of the same run.",
        s.session_workers,
        s.session_seconds,
        s.flood_pps,
        FLOOD_RAMP.as_millis()
    )
}

/// Whether a flood figure runs for this carrier: the nftables baseline stands in the
/// kernel-helper scenario; ftp-guard only where its kernel path drops.
pub fn applies(carrier: Carrier) -> bool {
    matches!(
        carrier,
        Carrier::KernelHelper
            | Carrier::FtpGuard {
                dataplane: "kernel",
                ..
            }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_rule_matches_only_syns_to_the_case_ports() {
        assert_eq!(
            drop_ruleset(&DATA_RANGE),
            "table netdev ftp_guard_bench_flood {\n\
             \tcounter syn_drops { }\n\
             \tchain ingress {\n\
             \t\ttype filter hook ingress device \"pub0\" priority filter; policy accept;\n\
             \t\tip daddr 203.0.113.1 tcp dport 40000-44999 tcp flags & (syn | ack) == syn counter name \"syn_drops\" drop\n\
             \t}\n\
             }\n"
        );
        assert_eq!(DATA_RANGE.nft_match, format!("tcp dport {DATA_PORTS}"));
    }

    #[test]
    fn reads_an_nft_counter() {
        let text =
            "table netdev t {\n\tcounter syn_drops {\n\t\tpackets 1234 bytes 66636\n\t}\n}\n";
        assert_eq!(counter_packets(text), Some(1234));
        assert_eq!(counter_packets("table netdev t {\n}\n"), None);
    }
}

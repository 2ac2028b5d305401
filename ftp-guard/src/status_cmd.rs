//! `ftp-guard status`: what a running daemon is doing, read from its admin endpoint.
use std::net::SocketAddr;

use clap::Args;

use crate::admin::{self, Status};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's admin endpoint (its `admin_listen`).
    #[arg(long, default_value = "127.0.0.1:9640")]
    pub admin: SocketAddr,
    /// Print the raw JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let body = admin::get(args.admin, "/status").await?;
    if args.json {
        print!("{body}");
        return Ok(());
    }
    let status: Status = serde_json::from_str(&body)?;
    print!("{}", render(&status));
    Ok(())
}

/// The tables `ftp-guard status` prints.
pub fn render(status: &Status) -> String {
    let mut out = format!(
        "ftp-guard {} up {:.0} s\\n\\n",
        status.version, status.uptime_secs
    );
    out += &table(
        &[
            "SERVICE",
            "LISTEN",
            "ORIGIN",
            "PUBLIC",
            "DATAPLANE",
            "SESSIONS",
            "LEASES",
            "BYTES->CLIENT",
            "BYTES->ORIGIN",
        ],
        status
            .services
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.listen.clone(),
                    s.origin.clone(),
                    s.public_ip.clone(),
                    s.dataplane.clone(),
                    s.sessions.len().to_string(),
                    s.leases.len().to_string(),
                    s.totals.bytes_to_client.to_string(),
                    s.totals.bytes_to_origin.to_string(),
                ]
            })
            .collect(),
    );
    let sessions: Vec<Vec<String>> = status
        .services
        .iter()
        .flat_map(|s| {
            s.sessions.iter().map(|x| {
                vec![
                    s.name.clone(),
                    x.id.to_string(),
                    x.client.clone(),
                    format!("{:.0}", x.age_secs),
                ]
            })
        })
        .collect();
    out += "\\nSESSIONS\\n";
    out += &table(&["SERVICE", "ID", "CLIENT", "AGE_S"], sessions);
    let leases: Vec<Vec<String>> = status
        .services
        .iter()
        .flat_map(|s| {
            s.leases.iter().map(|l| {
                vec![
                    s.name.clone(),
                    l.mode.clone(),
                    l.port.to_string(),
                    l.peer.clone(),
                    l.target.clone(),
                    l.state.clone(),
                    format!("{:.0}", l.age_secs),
                    l.bytes_to_client.to_string(),
                    l.bytes_to_origin.to_string(),
                ]
            })
        })
        .collect();
    out += "\\nLEASES AND DATA CONNECTIONS\\n";
    out += &table(
        &[
            "SERVICE",
            "MODE",
            "PORT",
            "PEER",
            "TARGET",
            "STATE",
            "AGE_S",
            "BYTES->CLIENT",
            "BYTES->ORIGIN",
        ],
        leases,
    );
    if let Some(k) = &status.kernel {
        out += "\\nKERNEL PATH\\n";
        out += &table(
            &["INTERFACE", "MODE"],
            k.attachments
                .iter()
                .map(|(i, m)| vec![i.clone(), m.clone()])
                .collect(),
        );
        out += &table(
            &["COUNTER", "PACKETS"],
            k.counters
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(c, v)| vec![c.clone(), v.to_string()])
                .collect(),
        );
    }
    out
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l + "\\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    if rows.is_empty() {
        out += "(none)\\n";
    }
    for row in rows {
        out += &line(row);
    }
    out
}

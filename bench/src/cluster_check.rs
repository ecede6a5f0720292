//! The cluster scenario's verdict and report: what each member received against what its
//! room was acknowledged, and the table.

use std::collections::HashSet;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::cluster::{self, ClusterResult, Cpu};
use crate::load::{new_histogram, Load};
use crate::report::{micros, table, thousands, Percentiles, Progress};
use crate::Cli;

/// What one member's connection saw.
pub struct Member {
    pub room: usize,
    pub node: usize,
    pub sender: bool,
    /// Ids of the room's messages delivered to it, in arrival order.
    pub ids: Vec<u64>,
    /// Ids of its own messages, from their acknowledgements.
    pub own: Vec<u64>,
    /// Latency of deliveries from a sender on its node, and from other nodes.
    pub same: Histogram<u64>,
    pub cross: Histogram<u64>,
}

impl Default for Member {
    fn default() -> Member {
        Member {
            room: 0,
            node: 0,
            sender: false,
            ids: Vec::new(),
            own: Vec::new(),
            same: new_histogram(),
            cross: new_histogram(),
        }
    }
}

/// Checks every member against its room: the room's sequence is every id its senders were
/// acknowledged, in id order; a member must receive exactly that, less its own, in that
/// order. Fills the counts of the result.
pub fn check(members: &[Member], load: &Load) -> ClusterResult {
    let mut rooms: Vec<Vec<u64>> = vec![Vec::new(); load.rooms];
    for m in members {
        rooms[m.room].extend(&m.own);
    }
    for ids in &mut rooms {
        ids.sort_unstable();
        ids.dedup();
    }
    let mut r = ClusterResult {
        expected_deliveries: load.expected(),
        ..ClusterResult::default()
    };
    let room_total = load.senders as u64 * load.messages;
    for m in members {
        let own: HashSet<u64> = m.own.iter().copied().collect();
        let expected: Vec<u64> = rooms[m.room]
            .iter()
            .copied()
            .filter(|id| !own.contains(id))
            .collect();
        let wanted: HashSet<u64> = expected.iter().copied().collect();
        r.deliveries += m.ids.len() as u64;
        r.order_violations += m.ids.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        let mut seen = HashSet::with_capacity(m.ids.len());
        for id in &m.ids {
            if !seen.insert(*id) {
                r.duplicated_deliveries += 1;
            } else if !wanted.contains(id) {
                r.unexpected_deliveries += 1;
            }
        }
        let got = seen.iter().filter(|id| wanted.contains(id)).count() as u64;
        // What it should have had: its room's messages but its own, also those whose
        // acknowledgement never came (then the acknowledged ids undercount).
        let own_sent = if m.sender { load.messages } else { 0 };
        let should = (wanted.len() as u64).max(room_total.saturating_sub(own_sent));
        r.lost_deliveries += should.saturating_sub(got);
        if m.ids != expected {
            r.members_off_sequence += 1;
        }
    }
    r
}

/// Runs the scenario from the command line into `out`; true if every delivery was right.
pub async fn scenario(cli: &Cli, progress: &Progress, out: &mut Value) -> Result<bool> {
    let nodes = if cli.nodes.is_empty() {
        vec![cli.addr.clone()]
    } else {
        cli.nodes.clone()
    };
    let mut load = cli.load();
    if cli.room_rate > 0.0 {
        load.rate = cli.room_rate / load.senders.max(1) as f64;
        let duration = cli.duration.unwrap_or(10.0);
        load.messages = cli
            .messages
            .unwrap_or((duration * load.rate).round() as u64);
    }
    let mut server_pids = cli.server_pids.clone();
    server_pids.extend(cli.server_pid);
    let cpu = Cpu {
        server_pids,
        postmaster_pid: cli.postmaster_pid,
    };
    let r = cluster::run(&nodes, &load, crate::patience(cli), &cpu, progress).await?;
    out["nodes"] = json!(nodes);
    out["room_rate"] = json!(cli.room_rate);
    out["load"] = json!(load);
    out["result"] = json!(r);
    if !cli.json {
        print(&nodes, &load, cli.room_rate, &r);
    }
    Ok(r.clean())
}

fn print(nodes: &[String], load: &Load, room_rate: f64, r: &ClusterResult) {
    let lat = |p: &Percentiles| match p.count {
        0 => "none".to_string(),
        n => format!(
            "p50 {} p99 {} p99.9 {} max {} ({} deliveries)",
            micros(p.p50),
            micros(p.p99),
            micros(p.p999),
            micros(p.max),
            thousands(n as f64)
        ),
    };
    let mut rows = vec![
        (
            "shape".into(),
            format!(
                "{} rooms x {} members over {} node(s), {} sender(s) per room x {} messages \
                 of {} bytes, {}",
                load.rooms,
                load.clients,
                nodes.len(),
                load.senders,
                load.messages,
                load.size,
                match room_rate > 0.0 {
                    true => format!("{room_rate} msg/s per room"),
                    false => "full speed".into(),
                }
            ),
        ),
        (
            "deliveries".into(),
            format!(
                "{} of {} in {:.2} s",
                r.deliveries, r.expected_deliveries, r.seconds
            ),
        ),
        ("deliveries/s".into(), thousands(r.deliveries_per_sec)),
        (
            "messages acknowledged".into(),
            format!(
                "{} of {} ({}/s)",
                r.messages_acked,
                r.messages_sent,
                thousands(r.messages_per_sec)
            ),
        ),
        (
            "lost / duplicated".into(),
            format!(
                "{} / {} ({} unexpected)",
                r.lost_deliveries, r.duplicated_deliveries, r.unexpected_deliveries
            ),
        ),
        (
            "order violations".into(),
            format!(
                "{} ({} members off their room's sequence)",
                r.order_violations, r.members_off_sequence
            ),
        ),
        ("latency, same node".into(), lat(&r.same_node_us)),
        ("latency, cross node".into(), lat(&r.cross_node_us)),
    ];
    if let (Some(ns), Some(share)) = (r.server_cpu_ns_per_delivery, r.server_cpu_share) {
        rows.push((
            "servers' CPU".into(),
            format!("{ns:.0} ns per delivery ({:.0}% of a core)", share * 100.0),
        ));
    }
    if let (Some(ns), Some(share)) = (r.db_cpu_ns_per_delivery, r.db_cpu_share) {
        rows.push((
            "PostgreSQL's CPU".into(),
            format!("{ns:.0} ns per delivery ({:.0}% of a core)", share * 100.0),
        ));
    }
    table(&format!("cluster against {}", nodes.join(", ")), &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(room: usize, ids: &[u64], own: &[u64]) -> Member {
        Member {
            room,
            sender: !own.is_empty(),
            ids: ids.to_vec(),
            own: own.to_vec(),
            ..Member::default()
        }
    }

    fn load() -> Load {
        Load {
            rooms: 1,
            clients: 3,
            senders: 2,
            messages: 2,
            rate: 0.0,
            size: 64,
            window: 1,
        }
    }

    #[test]
    fn a_clean_room_passes() {
        let members = [
            member(0, &[2, 4], &[1, 3]),
            member(0, &[1, 3], &[2, 4]),
            member(0, &[1, 2, 3, 4], &[]),
        ];
        let r = check(&members, &load());
        assert_eq!(r.deliveries, 8);
        assert_eq!(r.expected_deliveries, 8);
        assert_eq!(
            (
                r.lost_deliveries,
                r.duplicated_deliveries,
                r.order_violations,
                r.members_off_sequence
            ),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn loss_duplicates_and_disorder_are_counted() {
        let members = [
            member(0, &[2, 4, 4], &[1, 3]),
            member(0, &[3, 1], &[2, 4]),
            member(0, &[1, 2, 4], &[]),
        ];
        let r = check(&members, &load());
        assert_eq!(r.duplicated_deliveries, 1);
        assert_eq!(r.order_violations, 2, "4 after 4, 1 after 3");
        assert_eq!(r.lost_deliveries, 1, "the third member never got 3");
        assert_eq!(r.members_off_sequence, 3);
        assert_eq!(r.unexpected_deliveries, 0);
    }
}

//! The server's metrics, in Prometheus text for `/metrics`: counted through the `metrics`
//! facade into one process-wide recorder of `metrics-exporter-prometheus`.
//!
//! Handles are registered once ([`Metrics`], built with the recorder) and kept: the paths
//! that run per message (storing, fan-out) add to a handle once per batch, never look a name
//! up. What the hub can tell at any moment (rooms, members, lagging members, names held) is
//! not counted as it changes but read by [`render`] at scrape time, so it costs nothing
//! between scrapes.
//!
//! Counters are process-wide: tests start several servers in one process, and their counts
//! add up; the gauges [`render`] sets describe the hub it is given.

use std::sync::LazyLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::hub::Hub;
use crate::protocol::ErrorCode;

/// The transports, as [`crate::transport::Transport::kind`] names them: the `transport` label.
pub const TRANSPORTS: [&str; 3] = ["tcp", "tls", "websocket"];

/// How often samples of histograms are folded into their buckets when nobody scrapes (the
/// recorder keeps raw samples until then).
const UPKEEP: Duration = Duration::from_secs(5);

/// Messages per store batch: the writer takes at most 1024.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Seconds one batch took to store: from a memory store's microseconds to a database's
/// `--db-timeout`.
const COMMIT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Why the server closed a connection itself: the `reason` label of forced closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForcedClose {
    /// It took no output for the stall timeout (`BYE too slow`).
    TooSlow,
    TooManyErrors,
    LoginTimeout,
    Shutdown,
    /// Its guest name was registered meanwhile.
    NameRegistered,
    /// Its account was removed or its password changed elsewhere.
    AccountChanged,
    /// Its name, taken while the database was away, is held on another server.
    NameTaken,
}

impl ForcedClose {
    pub const ALL: [ForcedClose; 7] = [
        ForcedClose::TooSlow,
        ForcedClose::TooManyErrors,
        ForcedClose::LoginTimeout,
        ForcedClose::Shutdown,
        ForcedClose::NameRegistered,
        ForcedClose::AccountChanged,
        ForcedClose::NameTaken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ForcedClose::TooSlow => "too_slow",
            ForcedClose::TooManyErrors => "too_many_errors",
            ForcedClose::LoginTimeout => "login_timeout",
            ForcedClose::Shutdown => "shutdown",
            ForcedClose::NameRegistered => "name_registered",
            ForcedClose::AccountChanged => "account_changed",
            ForcedClose::NameTaken => "name_taken",
        }
    }
}

/// Every metric's handle, registered once.
pub struct Metrics {
    /// Connections accepted, by [`TRANSPORTS`] position.
    pub accepted: [Counter; 3],
    /// Connections open, by [`TRANSPORTS`] position.
    pub open: [Gauge; 3],
    /// Messages stored (`SAY`s acknowledged).
    pub said: Counter,
    /// Message lines handed to members (one per message and recipient).
    pub delivered: Counter,
    /// Messages per store batch.
    pub batch_size: Histogram,
    /// Seconds per store batch.
    pub commit_seconds: Histogram,
    /// Catch-ups from the store begun after a lag.
    pub catch_ups: Counter,
    /// By [`ForcedClose::ALL`] position.
    forced_closes: [Counter; 7],
    /// By [`ErrorCode::ALL`] position.
    errors: Vec<Counter>,
    rooms: Gauge,
    members: Gauge,
    lagging: Gauge,
    names: Gauge,
}

struct Telemetry {
    handle: PrometheusHandle,
    metrics: Metrics,
}

static TELEMETRY: LazyLock<Telemetry> = LazyLock::new(install);

/// Builds the recorder and registers every metric on it, then makes it the process's global
/// recorder (for any `counter!` elsewhere; ours do not depend on it, so a recorder installed
/// before ours costs nothing but a warning).
fn install() -> Telemetry {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in [
        ("linechat_store_batch_messages", &BATCH_BUCKETS[..]),
        ("linechat_store_commit_seconds", &COMMIT_BUCKETS[..]),
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
            .expect("buckets are given");
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    let metrics = metrics::with_local_recorder(&recorder, register);
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("another metrics recorder is installed; /metrics shows linechat's own");
    }
    let upkeep = handle.clone();
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP);
            upkeep.run_upkeep();
        });
    if let Err(e) = started {
        tracing::warn!("cannot start the metrics upkeep thread: {e}");
    }
    Telemetry { handle, metrics }
}

fn register() -> Metrics {
    describe_counter!(
        "linechat_connections_accepted_total",
        "Connections accepted, by transport"
    );
    describe_gauge!(
        "linechat_connections_open",
        "Connections open now, by transport"
    );
    describe_counter!(
        "linechat_messages_said_total",
        "Messages stored (SAYs acknowledged)"
    );
    describe_counter!(
        "linechat_messages_delivered_total",
        "Message lines handed to room members, one per message and recipient"
    );
    describe_histogram!(
        "linechat_store_batch_messages",
        "Messages per batch the writer stores at once"
    );
    describe_histogram!(
        "linechat_store_commit_seconds",
        "Seconds the store took for one batch"
    );
    describe_counter!(
        "linechat_catch_ups_total",
        "Catch-ups from the store begun for lagging members"
    );
    describe_counter!(
        "linechat_forced_closes_total",
        "Connections the server closed itself, by reason"
    );
    describe_counter!(
        "linechat_errors_sent_total",
        "ERR lines sent, by error code"
    );
    describe_gauge!("linechat_rooms", "Rooms with members");
    describe_gauge!(
        "linechat_members",
        "Room memberships (a connection in 3 rooms counts 3)"
    );
    describe_gauge!(
        "linechat_lagging_members",
        "Connections lagging: too slow for their rooms, to be caught up from the store"
    );
    describe_gauge!("linechat_names_held", "Names held by connections");
    Metrics {
        accepted: TRANSPORTS
            .map(|t| metrics::counter!("linechat_connections_accepted_total", "transport" => t)),
        open: TRANSPORTS.map(|t| metrics::gauge!("linechat_connections_open", "transport" => t)),
        said: metrics::counter!("linechat_messages_said_total"),
        delivered: metrics::counter!("linechat_messages_delivered_total"),
        batch_size: metrics::histogram!("linechat_store_batch_messages"),
        commit_seconds: metrics::histogram!("linechat_store_commit_seconds"),
        catch_ups: metrics::counter!("linechat_catch_ups_total"),
        forced_closes: ForcedClose::ALL
            .map(|r| metrics::counter!("linechat_forced_closes_total", "reason" => r.as_str())),
        errors: ErrorCode::ALL
            .iter()
            .map(|c| metrics::counter!("linechat_errors_sent_total", "code" => c.as_str()))
            .collect(),
        rooms: metrics::gauge!("linechat_rooms"),
        members: metrics::gauge!("linechat_members"),
        lagging: metrics::gauge!("linechat_lagging_members"),
        names: metrics::gauge!("linechat_names_held"),
    }
}

/// The metrics' handles (the recorder is installed at the first call).
pub fn metrics() -> &'static Metrics {
    &TELEMETRY.metrics
}

/// Counts an `ERR` line sent with `code`.
pub fn error_sent(code: ErrorCode) {
    // ErrorCode's variants have no explicit values: each one's is its place in ALL.
    if let Some(counter) = metrics().errors.get(code as usize) {
        counter.increment(1);
    }
}

/// Counts a connection the server closed itself.
pub fn forced_close(why: ForcedClose) {
    metrics().forced_closes[why as usize].increment(1);
}

/// A connection counted as open until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    /// Its place in [`TRANSPORTS`]: one byte in every connection's task.
    transport: u8,
}

/// Counts a connection accepted over `transport` (a [`TRANSPORTS`] name) and open until the
/// returned guard is dropped.
pub fn connection_opened(transport: &str) -> OpenConnection {
    let Some(i) = TRANSPORTS.iter().position(|t| *t == transport) else {
        debug_assert!(false, "transport {transport} is not in TRANSPORTS");
        return OpenConnection { transport: u8::MAX };
    };
    metrics().accepted[i].increment(1);
    metrics().open[i].increment(1.0);
    OpenConnection { transport: i as u8 }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(open) = metrics().open.get(usize::from(self.transport)) {
            open.decrement(1.0);
        }
    }
}

/// Sets the gauges read from `hub`, then renders every metric in Prometheus text format.
pub fn render(hub: &Hub) -> String {
    let m = metrics();
    let (rooms, members) = hub.rooms.totals();
    m.rooms.set(rooms as f64);
    m.members.set(members as f64);
    m.lagging.set(hub.mailboxes.lagging() as f64);
    m.names.set(hub.nicks.len() as f64);
    TELEMETRY.handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_and_close_reason_has_its_counter() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code:?} is not at its place in ALL");
        }
        assert_eq!(metrics().errors.len(), ErrorCode::ALL.len());
        for (i, why) in ForcedClose::ALL.iter().enumerate() {
            assert_eq!(*why as usize, i, "{why:?} is not at its place in ALL");
        }
    }

    /// A counter's value in rendered text, by its name and labels as they are written.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} is not in:\n{text}"))
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn what_is_counted_is_rendered_with_its_description() {
        let store: std::sync::Arc<dyn crate::store::HistoryStore> =
            std::sync::Arc::new(crate::store::MemoryStore::new(10));
        let accounts = std::sync::Arc::new(crate::accounts::MemoryAccounts::default());
        let (hub, _) = Hub::start(crate::Config::default(), store, accounts);
        let series = "linechat_errors_sent_total{code=\"BAD_ROOM\"}";
        let before = value(&render(&hub), series);
        error_sent(ErrorCode::BadRoom);
        error_sent(ErrorCode::BadRoom);
        let open = connection_opened("websocket");
        let text = render(&hub);
        assert_eq!(value(&text, series), before + 2.0);
        assert!(value(&text, "linechat_connections_open{transport=\"websocket\"}") >= 1.0);
        assert_eq!(value(&text, "linechat_rooms"), 0.0);
        assert!(text.contains("# HELP linechat_messages_said_total Messages stored"));
        assert!(text.contains("# TYPE linechat_store_commit_seconds histogram"));
        drop(open);
    }
}

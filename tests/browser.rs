//! The chat page in a real headless Chromium, driven over WebDriver (Debian's `chromedriver`),
//! against a real server: the page, its WebSocket and raw TCP clients in the same rooms.

mod common;

use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::web_server::WebServer;
use common::{memory_config, parse_message, pg, talk_in_chunks, Client, PATIENCE};
use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Two cores are shared by everything: at most two browsers at once.
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// The WebDriver code for the Enter key.
const ENTER: &str = "\u{E007}";

/// chromedriver and its Chromium; both are stopped when this is dropped, however the test
/// ends (chromedriver runs in its own process group, which Chromium's processes join).
struct Browser {
    driver: Child,
    profile: PathBuf,
    web: Option<WebDriver>,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver (install chromium-driver)");
        let profile = pg::temp_dir("chromium");
        let mut browser = Browser {
            driver,
            profile,
            web: None,
        };
        wait_for_port(port).await;
        let profile_arg = format!("--user-data-dir={}", browser.profile.display());
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            // Without these Chromium stalls on a closed network, trying to reach Google.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,860",
            &profile_arg,
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        // chromedriver listening is not always chromedriver ready: on a loaded machine its
        // first connection has been reset (CI on 7e53cde). A few tries, one deadline.
        let url = format!("http://127.0.0.1:{port}");
        let web = tokio::time::timeout(PATIENCE, async {
            let mut tries = 0;
            loop {
                let session = ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await;
                match session {
                    Err(e) if tries < 3 => {
                        tries += 1;
                        eprintln!("no WebDriver session yet ({e}); trying again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    session => break session,
                }
            }
        })
        .await
        .expect("Chromium starts in time")
        .expect("a WebDriver session");
        browser.web = Some(web);
        browser
    }

    fn web(&self) -> &WebDriver {
        self.web.as_ref().unwrap()
    }

    /// Ends the session (Chromium exits), then chromedriver.
    async fn close(mut self) {
        if let Some(web) = self.web.take() {
            let _ = tokio::time::timeout(PATIENCE, web.close()).await;
        }
    }

    /// Opens the page and waits for its script to have run.
    async fn open(&self, url: &str) -> Page<'_> {
        self.web().goto(url).await.expect("open the page");
        let page = Page { web: self.web() };
        page.wait_for(
            "the page's script",
            "return document.readyState === 'complete'",
        )
        .await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill has no preconditions; the group is chromedriver's own (process_group(0)).
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver listens"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    id: u64,
    nick: String,
    text: String,
}

/// The page's DOM, read and driven the way a user would (typing, Enter).
struct Page<'a> {
    web: &'a WebDriver,
}

impl Page<'_> {
    async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.web.execute(script, args).await.expect("script runs")
    }

    /// Polls `script` (which returns a value) until it is truthy; panics with the page's
    /// state after `patience`.
    async fn wait_for_within(&self, what: &str, script: &str, patience: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let v = self.run(script, vec![]).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "waiting for {what}; the page says:\n{}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for(&self, what: &str, script: &str) -> Value {
        self.wait_for_within(what, script, PATIENCE).await
    }

    /// The page's visible text, for failure messages.
    async fn describe(&self) -> String {
        self.run("return document.body.innerText", vec![])
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The messages shown in `room`'s log, in DOM order.
    async fn messages(&self, room: &str) -> Vec<Shown> {
        let v = self
            .run(
                r#"const log = document.querySelector(`.log[data-room="${CSS.escape(arguments[0])}"]`);
                   if (!log) return [];
                   return [...log.querySelectorAll('.message')].map((li) => [
                     li.dataset.id,
                     li.querySelector('.nick').textContent,
                     li.querySelector('.text').textContent,
                   ]);"#,
                vec![json!(room)],
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| Shown {
                id: m[0].as_str().unwrap().parse().unwrap(),
                nick: m[1].as_str().unwrap().to_string(),
                text: m[2].as_str().unwrap().to_string(),
            })
            .collect()
    }

    /// Waits until `room` shows at least `n` messages; returns them.
    async fn wait_messages(&self, room: &str, n: usize) -> Vec<Shown> {
        self.wait_messages_within(room, n, PATIENCE).await
    }

    async fn wait_messages_within(&self, room: &str, n: usize, patience: Duration) -> Vec<Shown> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let shown = self.messages(room).await;
            if shown.len() >= n {
                return shown;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "waiting for {n} messages in {room}, have {shown:?}; the page says:\n{}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The nicks in the presence list.
    async fn members(&self) -> Vec<String> {
        let v = self
            .run(
                "return [...document.querySelectorAll('#members .member')].map((m) => m.textContent)",
                vec![],
            )
            .await;
        serde_json::from_value(v).unwrap()
    }

    async fn wait_members(&self, want: &[&str]) {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let have = self.members().await;
            if have == want {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "members {have:?}, wanted {want:?}; the page says:\n{}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `room` is joined (its tab is there and the composer works).
    async fn wait_joined(&self, room: &str) {
        let script = format!(
            "return !!document.querySelector('.tab[data-room=\"{room}\"]') \
             && !document.querySelector('#input').disabled"
        );
        self.wait_for(&format!("room {room} joined"), &script).await;
    }

    async fn click(&self, css: &str) {
        self.web
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Types into `css` as a user would.
    async fn type_into(&self, css: &str, keys: &str) {
        self.web
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .send_keys(keys)
            .await
            .unwrap();
    }

    /// Types `text` in the message field and presses Enter.
    async fn say(&self, text: &str) {
        self.type_into("#input", &format!("{text}{ENTER}")).await;
    }

    /// Shows `room`'s tab, as a click on it does.
    async fn show_room(&self, room: &str) {
        self.click(&format!(".tab[data-room=\"{room}\"] button"))
            .await;
    }

    async fn unread(&self, room: &str) -> String {
        let v = self
            .run(
                "const b = document.querySelector(`.tab[data-room=\"${arguments[0]}\"] .unread`); \
                 return b && !b.hidden ? b.textContent : ''",
                vec![json!(room)],
            )
            .await;
        v.as_str().unwrap().to_string()
    }
}

/// Reads lines from `client` until a `MSG` arrives; returns it parsed.
async fn next_msg(client: &mut Client) -> common::Message {
    loop {
        let line = client.line().await;
        if line.starts_with("MSG ") {
            return parse_message(&line);
        }
    }
}

/// Reads lines from `client` until a `MSG` from `nick` arrives; returns it parsed.
async fn msg_from(client: &mut Client, nick: &str) -> common::Message {
    loop {
        let m = next_msg(client).await;
        if m.nick == nick {
            return m;
        }
    }
}

fn shown(id: u64, nick: &str, text: &str) -> Shown {
    Shown {
        id,
        nick: nick.to_string(),
        text: text.to_string(),
    }
}

#[tokio::test]
async fn a_page_and_a_tcp_client_chat_both_ways() {
    let _slot = BROWSERS.acquire().await.unwrap();
    let server = WebServer::start(memory_config()).await;
    let mut bob = server.login("bob").await;
    bob.join("4").await;

    let browser = Browser::start().await;
    let page = browser.open(&server.page_url("nick=alice&room=4")).await;
    page.wait_joined("4").await;
    bob.expect("JOINED 4 alice").await;
    page.wait_members(&["alice", "bob"]).await;

    // TCP to the page: the text, the sender and the id, at the local time of the MSG.
    let id = bob.say("hello from netcat").await;
    let got = page.wait_messages("4", 1).await;
    assert_eq!(got, [shown(id, "bob", "hello from netcat")]);

    // The page to TCP: typed, sent with Enter.
    page.say("hi from the browser").await;
    let m = next_msg(&mut bob).await;
    assert_eq!((m.room.as_str(), m.nick.as_str()), ("4", "alice"));
    assert_eq!(m.text, "hi from the browser");
    let got = page.wait_messages("4", 2).await;
    assert_eq!(got[1], shown(m.id, "alice", "hi from the browser"));
    let time = page
        .run(
            "return document.querySelectorAll('.message .time')[1].dateTime",
            vec![],
        )
        .await;
    assert_eq!(
        time,
        json!(m.time),
        "the time element carries the message's time"
    );

    // Text with newlines goes as one SAY per line: no frame carries a newline.
    page.type_into("#input", "first line").await;
    page.type_into("#input", "\u{E008}\u{E007}").await; // Shift+Enter: a new line, not sent
    page.type_into("#input", &format!("second line{ENTER}"))
        .await;
    assert_eq!(next_msg(&mut bob).await.text, "first line");
    assert_eq!(next_msg(&mut bob).await.text, "second line");
    let got = page.wait_messages("4", 4).await;
    assert_eq!(got[2].text, "first line");
    assert_eq!(got[3].text, "second line");

    // Presence follows the room: bob leaves and comes back.
    bob.send("PART 4").await;
    page.wait_members(&["alice"]).await;
    bob.send("JOIN 4 NONE").await;
    page.wait_members(&["alice", "bob"]).await;
    // The page leaves the room (PART), then the chat (QUIT).
    page.click("#part").await;
    bob.until("LEFT 4 alice").await;
    page.wait_for(
        "the tab to go",
        "return !document.querySelector('.tab[data-room=\"4\"]')",
    )
    .await;
    page.click("#quit").await;
    page.wait_for(
        "the login form again",
        "return !document.querySelector('#login').hidden \
         && document.querySelector('.status').dataset.state === 'offline'",
    )
    .await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_page_joining_later_sees_the_history_first_then_live() {
    let _slot = BROWSERS.acquire().await.unwrap();
    let server = WebServer::start(memory_config()).await;
    let mut carol = server.login("carol").await;
    carol.join("side").await;
    carol.join("hist").await;
    // More than a JOIN replays (50): the rest is a click on "Show earlier messages" away.
    const EARLIER: usize = 55;
    let ids = talk_in_chunks(&mut carol, 0..EARLIER, "earlier").await;
    let earlier: Vec<Shown> = (ids.iter().enumerate())
        .map(|(i, &id)| shown(id, "carol", &format!("{i} earlier")))
        .collect();

    let browser = Browser::start().await;
    let page = browser
        .open(&server.page_url("nick=dave&room=hist,side"))
        .await;
    page.wait_joined("side").await;
    carol.expect("JOINED hist dave").await;
    carol.expect("JOINED side dave").await;
    // The newest history, in order, before anything live is said.
    assert_eq!(
        page.wait_messages("hist", 50).await,
        earlier[EARLIER - 50..]
    );

    carol.send("JOIN hist NONE").await;
    carol.until("OK JOIN hist").await;
    let live = carol.say("now live").await;
    let got = page.wait_messages("hist", 51).await;
    assert_eq!(got[..50], earlier[EARLIER - 50..]);
    assert_eq!(got[50], shown(live, "carol", "now live"));
    // And the older messages, fetched with HISTORY, go before them.
    page.wait_for(
        "the earlier-messages button",
        "return !document.querySelector('.log-wrap:not([hidden]) .earlier').hidden",
    )
    .await;
    page.click(".log-wrap:not([hidden]) .earlier").await;
    let got = page.wait_messages("hist", EARLIER + 1).await;
    assert_eq!(got[..EARLIER], earlier[..]);
    assert_eq!(got[EARLIER], shown(live, "carol", "now live"));

    // The first room is shown; talk in the other counts as unread there.
    carol.send("JOIN side NONE").await;
    carol.until("OK JOIN side").await;
    carol.say("over here").await;
    carol.say("and here").await;
    page.wait_messages("side", 2).await;
    assert_eq!(page.unread("side").await, "2");
    assert_eq!(page.unread("hist").await, "");
    page.show_room("side").await;
    assert_eq!(page.unread("side").await, "");
    page.wait_members(&["carol", "dave"]).await;
    // And the page speaks in the room it shows.
    page.say("heard you").await;
    let m = next_msg(&mut carol).await;
    assert_eq!((m.room.as_str(), m.text.as_str()), ("side", "heard you"));
    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_login_form_takes_a_registered_name_with_its_password() {
    const PASSWORD: &str = "correct-horse-42";
    let _slot = BROWSERS.acquire().await.unwrap();
    let server = WebServer::start(memory_config()).await;
    let mut owner = server.login("Hana").await;
    owner.send(&format!("REGISTER {PASSWORD}")).await;
    owner.expect("OK REGISTER Hana").await;
    owner.send("QUIT").await;
    owner.until_closed_after("BYE goodbye").await;
    let mut ivan = server.login("ivan").await;
    ivan.join("club").await;

    let browser = Browser::start().await;
    let page = browser.open(&server.page_url("room=club")).await;
    // The invite link filled in the room; the name and a wrong password are typed.
    let rooms = page
        .run(
            "return document.querySelector('#login-rooms').value",
            vec![],
        )
        .await;
    assert_eq!(rooms, json!("club"));
    page.type_into("#nick", "hana").await;
    page.type_into("#password", "not-the-password").await;
    page.click("#connect").await;
    let error = page
        .wait_for(
            "the refusal",
            "const e = document.querySelector('#login-error'); return !e.hidden && e.textContent",
        )
        .await;
    assert!(
        !error.as_str().unwrap().contains("not-the-password"),
        "{error}"
    );
    let chat_hidden = page
        .run("return document.querySelector('#chat').hidden", vec![])
        .await;
    assert_eq!(chat_hidden, json!(true), "still at the login form");

    // The right password logs in, with the name as it was registered.
    browser
        .web()
        .find(Locator::Css("#password"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    page.type_into("#password", &format!("{PASSWORD}{ENTER}"))
        .await;
    page.wait_joined("club").await;
    ivan.expect("JOINED club Hana").await;
    let me = page
        .run("return document.querySelector('#me').textContent", vec![])
        .await;
    assert_eq!(me, json!("Hana"));
    page.say("signed in").await;
    assert_eq!(msg_from(&mut ivan, "Hana").await.text, "signed in");
    browser.close().await;
    server.stop().await;
}

/// While the page's script is frozen, the browser stops reading its socket and the server
/// stops queueing for it (a slow reader, PROTOCOL.md section 8): the page is told `LAGGED`
/// and then receives the gap, every message once and in order.
#[tokio::test]
async fn a_page_that_falls_behind_is_told_and_misses_nothing() {
    const TOTAL: usize = 3000;
    let _slot = BROWSERS.acquire().await.unwrap();
    let config = linechat::Config {
        outbound_limit: 256 * 1024,
        ..memory_config()
    };
    let server = WebServer::start(config).await;
    let mut talker = server.login("talker").await;
    talker.join("busy").await;
    let browser = Browser::start().await;
    let page = browser.open(&server.page_url("nick=kim&room=busy")).await;
    page.wait_joined("busy").await;
    talker.expect("JOINED busy kim").await;

    let payload = "lorem ipsum dolor ".repeat(216);
    let flood = tokio::spawn(async move { talk_in_chunks(&mut talker, 0..TOTAL, &payload).await });
    // Frozen in spells of a second (a script call has its own timeout) until the talker is
    // done: meanwhile the browser's buffers and the kernel's fill, and the server's queue for
    // the page overflows.
    while !flood.is_finished() {
        page.run(
            "const until = Date.now() + 1000; while (Date.now() < until) {} return true",
            vec![],
        )
        .await;
    }
    let acked = flood.await.unwrap();
    let script = format!(
        "return document.querySelectorAll('.log[data-room=\"busy\"] .message').length >= {TOTAL}"
    );
    page.wait_for_within("every message", &script, Duration::from_secs(60))
        .await;
    let ids = page
        .run(
            "return [...document.querySelectorAll('.log[data-room=\"busy\"] .message')] \
             .map((m) => Number(m.dataset.id))",
            vec![],
        )
        .await;
    let ids: Vec<u64> = serde_json::from_value(ids).unwrap();
    assert_eq!(ids, acked, "every message once, in order");
    let told = page
        .run(
            "return [...document.querySelectorAll('.notice')].map((n) => n.textContent)",
            vec![],
        )
        .await;
    assert!(
        told.to_string().contains("fell behind"),
        "told about LAGGED: {told}"
    );
    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn markup_in_messages_shows_as_text() {
    let _slot = BROWSERS.acquire().await.unwrap();
    let server = WebServer::start(memory_config()).await;
    let mut mallory = server.login("mallory").await;
    mallory.join("x").await;
    let texts = [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "<b>bold?</b> &amp; &lt;",
    ];
    let mut want = Vec::new();
    for text in texts {
        want.push(shown(mallory.say(text).await, "mallory", text));
    }
    // A right-to-left override is shown as a visible mark, not obeyed.
    let id = mallory.say("abc\u{202E}fed").await;
    want.push(shown(id, "mallory", "abc<U+202E>fed"));

    let browser = Browser::start().await;
    let page = browser.open(&server.page_url("nick=erin&room=x")).await;
    page.wait_joined("x").await;
    assert_eq!(page.wait_messages("x", 4).await, want);
    // Typed into the page, the same text goes out verbatim and is shown verbatim.
    page.say(texts[1]).await;
    let m = next_msg(&mut mallory).await;
    assert_eq!(m.text, texts[1]);
    let got = page.wait_messages("x", 5).await;
    assert_eq!(got[4], shown(m.id, "erin", texts[1]));

    let made = page
        .run(
            "return [document.querySelectorAll('img').length, \
                     document.querySelectorAll('.log script, .log b').length]",
            vec![],
        )
        .await;
    assert_eq!(made, json!([0, 0]), "no element was made from message text");
    assert!(
        browser.web().get_alert_text().await.is_err(),
        "no alert is open"
    );
    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_page_reconnects_after_a_restart_and_misses_nothing() {
    const AWAY: usize = 60;
    let _slot = BROWSERS.acquire().await.unwrap();
    let config = pg::config().await;
    let server = WebServer::start(config.clone()).await;
    let (tcp, http) = (server.addr, server.http);
    let mut acked = Vec::new();
    let mut frank = server.login("frank").await;
    frank.join("r").await;

    let browser = Browser::start().await;
    let page = browser.open(&server.page_url("nick=gina&room=r")).await;
    page.wait_joined("r").await;
    frank.expect("JOINED r gina").await;
    for i in 0..3 {
        acked.push(frank.say(&format!("before {i}")).await);
    }
    page.say("gina before").await;
    acked.push(next_msg(&mut frank).await.id);
    page.wait_messages("r", 4).await;

    // The server stops: the page is told BYE and keeps trying. It comes back first without
    // its HTTP listener, so the page stays away while frank talks...
    drop(frank);
    server.stop().await;
    page.wait_for(
        "the page to notice",
        "return document.querySelector('.status').dataset.state !== 'online'",
    )
    .await;
    let server = WebServer::start_on(config.clone(), tcp, None).await;
    let mut frank = server.login("frank").await;
    frank.join("r").await;
    // More than a JOIN replays by default (50): only SINCE brings back all of them.
    acked.extend(talk_in_chunks(&mut frank, 0..AWAY, "while away").await);
    drop(frank);
    server.stop().await;
    assert_eq!(page.messages("r").await.len(), 4, "the page was away");

    // ...then whole again: the page reconnects by itself and catches up from the store.
    let server = WebServer::start_on(config, tcp, Some(http)).await;
    let mut frank = server.login("frank").await;
    frank.join("r NONE").await;
    let got = page
        .wait_messages_within("r", 4 + AWAY, Duration::from_secs(40))
        .await;
    let ids: Vec<u64> = got.iter().map(|m| m.id).collect();
    assert_eq!(ids, acked, "every message once, in order");
    let notice = format!(
        "return [...document.querySelectorAll('.notice')].some((n) => \
         n.textContent.includes('{AWAY} messages said meanwhile'))"
    );
    page.wait_for("the catch-up notice", &notice).await;

    // Live again, both ways.
    acked.push(frank.say("after").await);
    page.say("gina after").await;
    acked.push(next_msg(&mut frank).await.id);
    let got = page.wait_messages("r", 6 + AWAY).await;
    let ids: Vec<u64> = got.iter().map(|m| m.id).collect();
    assert_eq!(ids, acked, "every message once, in order");
    assert_eq!(got[4].text, "0 while away");
    assert_eq!(got[4 + AWAY].text, "after");
    assert_eq!(got[5 + AWAY].text, "gina after");
    browser.close().await;
    server.stop().await;
}

/// A memory-store server starts a new history when it restarts (a new `epoch=` in `HELLO`,
/// ids from 1 again): the page says so and shows the new history, instead of resuming with
/// ids that name other messages there.
#[tokio::test]
async fn after_a_memory_store_restart_the_page_starts_the_room_anew() {
    let _slot = BROWSERS.acquire().await.unwrap();
    let server = WebServer::start(memory_config()).await;
    let (tcp, http) = (server.addr, server.http);
    let mut lena = server.login("lena").await;
    lena.join("m").await;
    for i in 0..3 {
        lena.say(&format!("old {i}")).await;
    }
    let browser = Browser::start().await;
    let page = browser.open(&server.page_url("nick=max&room=m")).await;
    page.wait_messages("m", 3).await;
    drop(lena);
    server.stop().await;

    // The new server's ids start at 1 again: SINCE 3 would skip its first three messages.
    let server = WebServer::start_on(memory_config(), tcp, Some(http)).await;
    let mut lena = server.login("lena").await;
    lena.join("m").await;
    let mut want = Vec::new();
    for i in 0..4 {
        let text = format!("new {i}");
        want.push(shown(lena.say(&text).await, "lena", &text));
    }
    page.wait_for_within(
        "the reset notice",
        "return [...document.querySelectorAll('.notice')].some((n) => \
         n.textContent.includes('history was reset'))",
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(page.wait_messages("m", 4).await, want);
    browser.close().await;
    server.stop().await;
}

/// The page in a conversation, as `docs/web.png` shows it. The picture is written only when
/// `LINECHAT_SCREENSHOT` names a file (`LINECHAT_SCREENSHOT=docs/web.png cargo test --test
/// browser screenshot`), so that a test run leaves the tree as it was.
#[tokio::test]
async fn screenshot_of_a_conversation() {
    let _slot = BROWSERS.acquire().await.unwrap();
    let server = WebServer::start(memory_config()).await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    let mut chen = server.login("chen").await;
    for c in [&mut alice, &mut bob, &mut chen] {
        c.join("rust").await;
        c.join("lobby").await;
    }
    alice
        .say("Morning all! Is the release still on for Friday?")
        .await;
    bob.say("Yes, the last blocker was merged an hour ago.")
        .await;
    chen.say("I'll run the soak test over lunch, then tag it.")
        .await;
    alice.say("Did the reconnect fix make it in?").await;
    bob.say("It did: the page rejoins with SINCE, nothing lost or shown twice.")
        .await;
    chen.say("And <script> in a message is just text. I tried.")
        .await;
    alice
        .say("Great. The web page works offline too, no CDN at all.")
        .await;
    alice.send("JOIN rust NONE").await;
    alice.until("OK JOIN rust").await;
    alice.say("Anyone tried the new WebSocket transport?").await;

    let browser = Browser::start().await;
    let page = browser
        .open(&server.page_url("nick=dana&room=lobby&room=rust"))
        .await;
    page.wait_joined("rust").await;
    page.wait_messages("lobby", 7).await;
    page.wait_members(&["alice", "bob", "chen", "dana"]).await;
    page.say("Hi! Just joined from the browser.").await;
    msg_from(&mut bob, "dana").await;
    let text = "Welcome, dana: the link in the invite works then";
    bob.say(text).await;
    page.wait_messages("lobby", 9).await;
    bob.send("JOIN rust NONE").await;
    bob.until("OK JOIN rust").await;
    bob.say("Yes: same rooms, same history as netcat.").await;
    page.wait_messages("rust", 2).await;
    assert_eq!(page.unread("rust").await, "1");

    let png = browser.web().screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if let Ok(path) = std::env::var("LINECHAT_SCREENSHOT") {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::write(&path, &png).expect("write the screenshot");
    }
    browser.close().await;
    server.stop().await;
}

/// The ranges named by the page's MISSED notices, in DOM order, each with the ids of the
/// messages just before and just after it in the log.
async fn missed_notices(
    page: &Page<'_>,
    room: &str,
) -> Vec<((u64, u64), Option<u64>, Option<u64>)> {
    let v = page
        .run(
            r#"const log = document.querySelector(`.log[data-room="${CSS.escape(arguments[0])}"]`);
               const items = [...log.children];
               const near = (from, step) => {
                 for (let i = from; i >= 0 && i < items.length; i += step) {
                   if (items[i].classList.contains('message')) return Number(items[i].dataset.id);
                 }
                 return null;
               };
               return items.flatMap((el, i) => {
                 const m = /^Messages (\d+) to (\d+) are no longer kept/.exec(el.textContent);
                 if (!el.classList.contains('notice') || !m) return [];
                 return [[Number(m[1]), Number(m[2]), near(i - 1, -1), near(i + 1, 1)]];
               });"#,
            vec![json!(room)],
        )
        .await;
    let rows: Vec<(u64, u64, Option<u64>, Option<u64>)> = serde_json::from_value(v).unwrap();
    rows.into_iter()
        .map(|(first, last, before, after)| ((first, last), before, after))
        .collect()
}

/// A page that falls further behind than the memory store keeps (`--memory-history`) is told
/// `MISSED` for the ids the store let go (PROTOCOL.md section 8, Slow readers): the page shows
/// that, in the log where the gap is, then every message still kept and the live ones, each
/// once and in order.
#[tokio::test]
async fn a_page_behind_what_the_memory_store_keeps_is_told_what_it_missed() {
    const TOTAL: usize = 3000;
    const KEPT: usize = 100;
    let _slot = BROWSERS.acquire().await.unwrap();
    let config = linechat::Config {
        outbound_limit: 256 * 1024,
        memory_history: KEPT,
        ..memory_config()
    };
    let server = WebServer::start(config).await;
    let mut talker = server.login("talker").await;
    talker.join("kept").await;
    let browser = Browser::start().await;
    let page = browser.open(&server.page_url("nick=nora&room=kept")).await;
    page.wait_joined("kept").await;
    talker.expect("JOINED kept nora").await;

    let payload = "lorem ipsum dolor ".repeat(216);
    let flood = tokio::spawn(async move {
        let acked = talk_in_chunks(&mut talker, 0..TOTAL, &payload).await;
        (talker, acked)
    });
    // Frozen as in a_page_that_falls_behind_is_told_and_misses_nothing, while the store keeps
    // only the newest KEPT of the TOTAL messages.
    while !flood.is_finished() {
        page.run(
            "const until = Date.now() + 1000; while (Date.now() < until) {} return true",
            vec![],
        )
        .await;
    }
    let (mut talker, acked) = flood.await.unwrap();
    let newest = *acked.last().unwrap();
    let script = format!(
        "const m = [...document.querySelectorAll('.log[data-room=\"kept\"] .message')].pop(); \
         return !!m && Number(m.dataset.id) === {newest}"
    );
    page.wait_for_within("the newest message", &script, Duration::from_secs(60))
        .await;

    let missed = missed_notices(&page, "kept").await;
    assert!(
        !missed.is_empty(),
        "a MISSED notice; the page says:\n{}",
        page.describe().await
    );
    let mut want: Vec<u64> = acked.clone();
    for &((first, last), before, after) in &missed {
        assert!(first <= last, "{missed:?}");
        // Where the gap is: after the last message the page had, before the first one kept.
        assert_eq!(before, Some(first - 1).filter(|&id| id > 0), "{missed:?}");
        assert_eq!(after, Some(last + 1), "{missed:?}");
        want.retain(|id| !(first..=last).contains(id));
    }
    // The store still held its newest KEPT: none of those is missed.
    assert!(
        want.ends_with(&acked[TOTAL - KEPT..]),
        "the kept messages are shown"
    );
    let ids: Vec<u64> = page.messages("kept").await.iter().map(|m| m.id).collect();
    assert_eq!(
        ids, want,
        "every message kept, once, in order; only the missed ones not"
    );

    // And live again after the gap, in both directions.
    let live = talker.say("after the gap").await;
    page.say("nora is back").await;
    let back = next_msg(&mut talker).await;
    assert_eq!(back.text, "nora is back");
    let got = page.wait_messages("kept", want.len() + 2).await;
    assert_eq!(got.len(), want.len() + 2, "nothing shown twice");
    assert_eq!(got[want.len()], shown(live, "talker", "after the gap"));
    assert_eq!(got[want.len() + 1], shown(back.id, "nora", "nora is back"));
    browser.close().await;
    server.stop().await;
}

/// "Copy invite link" offers `/?room=<the room shown>` on the page's own origin (and not the
/// inviter's name: the invitee chooses one); that link, opened in another browser, fills in
/// the room, and the invitee is in it once they give a name.
#[tokio::test]
async fn the_invite_link_opens_the_room_in_another_browser() {
    // Two browsers at once: both slots, taken together so two such tests cannot deadlock.
    let _slots = BROWSERS.acquire_many(2).await.unwrap();
    let server = WebServer::start(memory_config()).await;
    let mut pat = server.login("pat").await;
    pat.join("club.house").await;

    let inviter = Browser::start().await;
    let page = inviter
        .open(&server.page_url("nick=quinn&room=lobby,club.house"))
        .await;
    page.wait_joined("club.house").await;
    pat.expect("JOINED club.house quinn").await;
    // The link is for the room shown, whichever it is.
    page.show_room("club.house").await;
    page.click("#invite").await;
    // Where the clipboard is refused (as in a headless browser) the link is shown instead,
    // on the button, for the user to copy by hand; otherwise it is in the clipboard.
    let shown_link = page
        .wait_for(
            "the invite link",
            "const t = document.querySelector('#invite').textContent; \
             return t !== 'Copy invite link' && t",
        )
        .await;
    let link = if shown_link == json!("Link copied") {
        // Pasted where the user would paste it: into a text field, with Ctrl+V.
        page.type_into("#room", "\u{E009}v\u{E000}").await;
        let pasted = page
            .run("return document.querySelector('#room').value", vec![])
            .await;
        pasted.as_str().unwrap().to_string()
    } else {
        shown_link.as_str().unwrap().to_string()
    };
    assert_eq!(link, format!("http://{}/?room=club.house", server.http));

    let invitee = Browser::start().await;
    let page2 = invitee.open(&link).await;
    let filled = page2
        .run(
            "return [document.querySelector('#login-rooms').value, \
                     document.querySelector('#nick').value]",
            vec![],
        )
        .await;
    assert_eq!(
        filled,
        json!(["club.house", ""]),
        "the room filled in, the name not"
    );
    page2.type_into("#nick", &format!("rosa{ENTER}")).await;
    page2.wait_joined("club.house").await;
    pat.expect("JOINED club.house rosa").await;
    page.wait_members(&["pat", "quinn", "rosa"]).await;
    page2.wait_members(&["pat", "quinn", "rosa"]).await;
    page2.say("thanks for the link").await;
    let m = msg_from(&mut pat, "rosa").await;
    assert_eq!(
        (m.room.as_str(), m.text.as_str()),
        ("club.house", "thanks for the link")
    );
    let got = page.wait_messages("club.house", 1).await;
    assert_eq!(got, [shown(m.id, "rosa", "thanks for the link")]);
    invitee.close().await;
    inviter.close().await;
    server.stop().await;
}

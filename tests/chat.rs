//! Chatting over real TCP: rooms, presence, ordering, the small commands.

mod common;

use common::{is_rfc3339_millis, parse_message, TestServer};

#[tokio::test]
async fn two_clients_chat_in_room_4() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    assert!(alice.join("4").await.is_empty());
    assert!(bob.join("4").await.is_empty());
    alice.expect("JOINED 4 bob").await;

    alice.send("SAY hello bob").await;
    let ok = alice.expect_prefix("OK SAY ").await;
    let words: Vec<&str> = ok.split(' ').collect();
    assert_eq!(words.len(), 4, "{ok}");
    let id: u64 = words[2].parse().unwrap();
    assert!(is_rfc3339_millis(words[3]), "{ok}");

    let msg = parse_message(&bob.line().await);
    assert_eq!(msg.kind, "MSG");
    assert_eq!((msg.room.as_str(), msg.id), ("4", id));
    assert_eq!(msg.time, words[3], "MSG carries the acked time");
    assert_eq!(
        (msg.nick.as_str(), msg.text.as_str()),
        ("alice", "hello bob")
    );

    let id2 = bob.say("hi  alice, spaces kept ").await;
    assert!(id2 > id);
    let reply = parse_message(&alice.line().await);
    assert_eq!(reply.text, "hi  alice, spaces kept ");
    assert_eq!(reply.nick, "bob");

    // Nobody gets an echo of their own message.
    alice.expect_nothing_pending().await;
    bob.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn presence_lines() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    alice.join("lobby").await;
    let mut bob = server.login("bob").await;
    bob.join("lobby").await;
    alice.expect("JOINED lobby bob").await;

    bob.send("NICK robert").await;
    bob.expect("OK NICK robert").await;
    alice.expect("NICK lobby bob robert").await;

    bob.send("PART").await;
    bob.expect("OK PART lobby").await;
    alice.expect("LEFT lobby robert").await;

    let mut carol = server.login("carol").await;
    carol.join("lobby").await;
    alice.expect("JOINED lobby carol").await;
    drop(carol); // vanishes without QUIT
    alice.expect("LEFT lobby carol").await;

    alice.send("WHO lobby").await;
    alice.expect("MEMBER lobby alice").await;
    alice.expect("OK WHO lobby 1").await;

    // Re-joining a room you are in replays again but announces nothing: checked on a member
    // that stays in the room, so it would see a JOINED line if there were one.
    bob.join("lobby").await;
    alice.expect("JOINED lobby robert").await;
    let id = alice.say("hello again").await;
    let m = parse_message(&bob.line().await);
    assert_eq!((m.id, m.text.as_str()), (id, "hello again"));
    let replay = alice.join("lobby LAST 1").await;
    assert_eq!(replay.len(), 1, "{replay:?}");
    let m = parse_message(&replay[0]);
    assert_eq!(
        (m.kind.as_str(), m.id, m.text.as_str()),
        ("HIST", id, "hello again")
    );
    bob.expect_nothing_pending().await;
    // The same the other way round, for a re-join that replays nothing.
    bob.send("JOIN lobby LAST 0").await;
    bob.expect(&format!("OK JOIN lobby 0 {id}")).await;
    alice.expect_nothing_pending().await;
    // Both are still members, once each.
    alice.send("WHO lobby").await;
    alice.expect("MEMBER lobby alice").await;
    alice.expect("MEMBER lobby robert").await;
    alice.expect("OK WHO lobby 2").await;
    bob.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn several_rooms_per_connection_and_the_current_room() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut in_a = server.login("ann").await;
    let mut in_b = server.login("ben").await;
    in_a.join("a").await;
    in_b.join("b").await;
    alice.join("a").await;
    alice.join("b").await;
    in_a.expect("JOINED a alice").await;
    in_b.expect("JOINED b alice").await;

    // The room joined last is current.
    alice.say("to b").await;
    assert_eq!(parse_message(&in_b.line().await).text, "to b");
    // Re-joining makes a room current again.
    alice.join("a NONE").await;
    alice.say("to a").await;
    let m = parse_message(&in_a.line().await);
    assert_eq!((m.room.as_str(), m.text.as_str()), ("a", "to a"));
    // Parting the current room falls back to the one joined before it.
    alice.send("PART a").await;
    alice.expect("OK PART a").await;
    in_a.expect("LEFT a alice").await;
    alice.say("b again").await;
    assert_eq!(parse_message(&in_b.line().await).text, "b again");

    // Members of both rooms get messages from both.
    in_a.join("b").await;
    in_b.expect("JOINED b ann").await;
    alice.expect("JOINED b ann").await;
    in_b.say("hello b").await;
    assert_eq!(parse_message(&alice.line().await).text, "hello b");
    assert_eq!(parse_message(&in_a.line().await).text, "hello b");

    alice.send("ROOMS").await;
    alice.expect("ROOM a 1").await;
    alice.expect("ROOM b 3").await;
    alice.expect("OK ROOMS 2").await;
    in_a.expect_nothing_pending().await;
    in_b.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

/// A client in several rooms makes one current again with `JOIN <room> NONE` before each
/// `SAY`. For a room it is in, `<last-id>` is the id through which the connection was shown
/// the room (no store is read): every `MSG` of that room after `OK JOIN` is newer, every
/// one before it is not, and none is lost or doubled, however the switches fall among the
/// room's traffic.
#[tokio::test]
async fn switching_rooms_with_join_none_splits_the_live_feed_exactly() {
    const SAYS: usize = 200;
    let server = TestServer::start().await;
    let mut talker = server.login("talker").await;
    talker.join("a NONE").await;
    let mut switcher = server.login("switcher").await;
    switcher.join("a NONE").await;
    switcher.join("b NONE").await;
    talker.expect("JOINED a switcher").await;
    let talk = tokio::spawn(async move {
        for n in 0..SAYS {
            talker.say(&format!("t{n}")).await;
        }
        talker
    });
    let (mut seen, mut boundaries, mut switches) = (Vec::new(), Vec::new(), 0);
    let mut pending_switch = false;
    while seen.len() < SAYS {
        if !pending_switch && seen.len() % 7 == 0 && switches < SAYS / 7 {
            let room = if switches % 2 == 0 { "a" } else { "b" };
            switcher.send(&format!("JOIN {room} NONE")).await;
            pending_switch = true;
            switches += 1;
        }
        let line = switcher.line().await;
        if let Some(ok) = line.strip_prefix("OK JOIN ") {
            let parts: Vec<&str> = ok.split(' ').collect();
            assert_eq!(parts[1], "0", "{line}");
            if parts[0] == "a" {
                let through: u64 = parts[2].parse().unwrap();
                let last_seen = seen.last().map_or(0, |&(id, _)| id);
                assert_eq!(
                    through, last_seen,
                    "OK JOIN names what was shown of a: {line}"
                );
                boundaries.push(through);
            }
            pending_switch = false;
            continue;
        }
        let m = parse_message(&line);
        assert_eq!(m.room, "a", "{line}");
        seen.push((m.id, m.text));
    }
    let texts: Vec<String> = seen.iter().map(|(_, t)| t.clone()).collect();
    let want: Vec<String> = (0..SAYS).map(|n| format!("t{n}")).collect();
    assert_eq!(texts, want, "every message once, in order");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(!boundaries.is_empty());
    let mut talker = talk.await.unwrap();
    if pending_switch {
        let line = switcher.line().await;
        assert!(line.starts_with("OK JOIN "), "{line}");
    }
    talker.expect_nothing_pending().await;
    switcher.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn per_sender_order_at_every_member() {
    const SENDERS: usize = 3;
    const LISTENERS: usize = 3;
    const EACH: usize = 300;
    let server = TestServer::start().await;
    let mut listeners = Vec::new();
    for i in 0..LISTENERS {
        let mut c = server.login(&format!("l{i}")).await;
        c.join("r NONE").await;
        listeners.push(c);
    }
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let mut c = server.login(&format!("s{i}")).await;
        c.join("r NONE").await;
        senders.push(c);
    }
    let talk = senders.into_iter().enumerate().map(|(i, mut c)| {
        tokio::spawn(async move {
            // Pipelined, as a script would: all lines first, then the acks.
            let mut batch = String::new();
            for n in 0..EACH {
                batch.push_str(&format!("SAY {n}\n"));
            }
            c.send_raw(batch.as_bytes()).await;
            let mut last = 0;
            for _ in 0..EACH {
                let (_, ok) = c.until("OK SAY ").await;
                let id: u64 = ok.split(' ').nth(2).unwrap().parse().unwrap();
                assert!(id > last, "acks in order: {id} after {last} for s{i}");
                last = id;
            }
            c
        })
    });
    let senders: Vec<_> = futures::future::join_all(talk).await;
    for c in listeners.iter_mut() {
        let mut next = [0usize; SENDERS];
        let mut last_id = 0;
        let mut got = 0;
        while got < SENDERS * EACH {
            let line = c.line().await;
            if line.starts_with("JOINED ") {
                continue;
            }
            let m = parse_message(&line);
            assert!(m.id > last_id, "ids increase: {} after {last_id}", m.id);
            last_id = m.id;
            let s: usize = m.nick[1..].parse().unwrap();
            assert_eq!(m.text, next[s].to_string(), "order from {}", m.nick);
            next[s] += 1;
            got += 1;
        }
        c.expect_nothing_pending().await;
    }
    drop(senders);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn small_commands() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.send("PING").await;
    c.expect("PONG").await;
    c.send("ping 12:00 token").await;
    c.expect("PONG 12:00 token").await;
    c.send("HELP").await;
    let (help, _) = c.until("OK HELP").await;
    assert!(help.iter().all(|l| l.starts_with("HELP ")));
    // One line per command, as PROTOCOL.md says.
    assert_eq!(help.len(), 16, "{help:?}");
    for verb in [
        "NICK", "REGISTER", "PASSWORD", "JOIN", "SAY", "HISTORY", "PART", "PRIVATE", "INVITE",
        "UNINVITE", "PUBLIC", "WHO", "ROOMS", "PING", "HELP", "QUIT",
    ] {
        assert!(
            help.iter().any(|l| l.starts_with(&format!("HELP {verb} "))),
            "HELP mentions {verb}"
        );
    }
    c.send("ROOMS").await;
    c.expect("OK ROOMS 0").await;
    c.send("WHO nowhere").await;
    c.expect("OK WHO nowhere 0").await;
    // Blank lines and stray spaces are harmless; CRLF and LF mix.
    c.send_raw(b"\n\r\n   \r\n  ping   x \r\n").await;
    c.expect("PONG x").await;
    c.send("QUIT see you").await;
    c.expect("BYE see you").await;
    assert_eq!(c.try_line().await, None, "closed after BYE");

    let mut d = server.client().await;
    d.send("quit").await;
    d.expect("BYE goodbye").await;
    assert_eq!(d.try_line().await, None);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn nick_is_released_when_its_connection_ends() {
    let server = TestServer::start().await;
    let mut a = server.login("alice").await;
    let mut b = server.client().await;
    b.send("NICK ALICE").await;
    b.expect_err("NICK_IN_USE").await;
    a.send("NICK alice2").await;
    a.expect("OK NICK alice2").await;
    b.send("NICK alice").await;
    b.expect("OK NICK alice").await;
    a.send("QUIT").await;
    a.expect("BYE goodbye").await;
    assert_eq!(a.try_line().await, None);
    let mut c = server.client().await;
    c.send("NICK alice2").await;
    c.expect("OK NICK alice2").await;
    server.stop().await.unwrap();
}
